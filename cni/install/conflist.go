package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/containernetworking/cni/pkg/version"

	"github.com/warren-mesh/warren/cni"
)

// This file holds the pure part: from a file's name and bytes to the bytes
// to write, with no I/O.

// object is a JSON object with its keys in file order, values untouched, so
// that a rewritten file reads like the original with one plugin more.
type object []field

type field struct {
	key   string
	value json.RawMessage
}

// parseObject decodes one JSON object and nothing after it.
func parseObject(data []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var o object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		o = o.set(tok.(string), v)
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return o, nil
}

func (o object) get(key string) (json.RawMessage, bool) {
	for _, f := range o {
		if f.key == key {
			return f.value, true
		}
	}
	return nil, false
}

// set replaces key's value in place, or appends it. A duplicate key keeps
// the last value, as encoding/json (and so libcni) reads it.
func (o object) set(key string, v json.RawMessage) object {
	for i, f := range o {
		if f.key == key {
			out := append(object(nil), o...)
			out[i].value = v
			return out
		}
	}
	return append(append(object(nil), o...), field{key, v})
}

func (o object) getString(key string) (string, bool) {
	raw, ok := o.get(key)
	if !ok {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// encode writes o indented by two spaces, with a final newline.
func (o object) encode() []byte {
	var flat bytes.Buffer
	flat.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			flat.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		flat.Write(k)
		flat.WriteByte(':')
		flat.Write(f.value)
	}
	flat.WriteByte('}')
	var out bytes.Buffer
	// Every value came out of a decoder or json.Marshal, so it is valid.
	if err := json.Indent(&out, flat.Bytes(), "", "  "); err != nil {
		panic("install: re-encoding a decoded object: " + err.Error())
	}
	out.WriteByte('\n')
	return out.Bytes()
}

// sameJSON reports whether a and b hold the same JSON values, whatever
// their formatting and key order.
func sameJSON(a, b []byte) bool {
	decode := func(data []byte) (any, bool) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var v any
		return v, dec.Decode(&v) == nil
	}
	x, okx := decode(a)
	y, oky := decode(b)
	return okx && oky && reflect.DeepEqual(x, y)
}

// entry is warren-cni's plugin entry in a conflist. cniVersion and name
// are not repeated: the runtime passes the list's own to every plugin.
type entry struct {
	Type        string `json:"type"`
	AgentSocket string `json:"agentSocket"`
	LogFile     string `json:"logFile"`
}

func (e entry) raw() json.RawMessage {
	b, _ := json.Marshal(e)
	return b
}

// minVersion is the first CNI version that hands a chained plugin the
// previous plugin's result; warren-cni refuses to run without it.
const minVersion = "0.3.0"

// conflistName is the name a single-plugin file gets once converted:
// "10-bridge.conf" -> "10-bridge.conflist". Only a list can chain, and
// libcni refuses a list in a .conf file, so the plugin moves into a
// .conflist (as istio-cni does). That name sorts right after the .conf and
// before anything else, so it stays the primary once the .conf is removed;
// the .conf must go, or it would stay first and unchained.
func conflistName(name string) string {
	return strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist"
}

// asList reads a configuration file as a plugin list. A file with a
// "plugins" key is a list whatever its extension; any other object is a
// single plugin, wrapped the way libcni runs it: a list with the plugin's
// name and cniVersion, holding the plugin unchanged. converted tells which.
func asList(name string, data []byte) (list object, converted bool, err error) {
	o, err := parseObject(data)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
	}
	if _, ok := o.get("plugins"); ok {
		return o, false, checkList(name, o)
	}
	if t, ok := o.getString("type"); !ok || t == "" {
		return nil, false, fmt.Errorf("%w: %s: neither a plugin list nor a plugin (no \"plugins\", no \"type\")", ErrInvalidConfig, name)
	}
	var wrapped object
	for _, k := range []string{"cniVersion", "name"} {
		if v, ok := o.get(k); ok {
			wrapped = wrapped.set(k, v)
		}
	}
	ps, _ := json.Marshal([]json.RawMessage{o.encodeCompact()})
	wrapped = wrapped.set("plugins", ps)
	return wrapped, true, checkList(name, wrapped)
}

func (o object) encodeCompact() json.RawMessage {
	var out bytes.Buffer
	json.Compact(&out, o.encode())
	return out.Bytes()
}

// checkList refuses lists warren-cni cannot be chained into.
func checkList(name string, list object) error {
	if n, ok := list.getString("name"); !ok || n == "" {
		return fmt.Errorf("%w: %s: no network name", ErrInvalidConfig, name)
	}
	v, ok := list.getString("cniVersion")
	if !ok || v == "" {
		return fmt.Errorf("%w: %s: no cniVersion; chaining needs %s or later", ErrInvalidConfig, name, minVersion)
	}
	if ge, err := version.GreaterThanOrEqualTo(v, minVersion); err != nil || !ge {
		return fmt.Errorf("%w: %s: cniVersion %q cannot chain plugins (needs %s or later)", ErrInvalidConfig, name, v, minVersion)
	}
	if _, err := plugins(name, list); err != nil {
		return err
	}
	return nil
}

// plugins returns the list's plugins, each an object.
func plugins(name string, list object) ([]object, error) {
	raw, _ := list.get("plugins")
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("%w: %s: \"plugins\" is not an array", ErrInvalidConfig, name)
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: %s: \"plugins\" is empty", ErrInvalidConfig, name)
	}
	out := make([]object, len(items))
	for i, it := range items {
		o, err := parseObject(it)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: plugin %d: %v", ErrInvalidConfig, name, i, err)
		}
		out[i] = o
	}
	return out, nil
}

func isOurs(p object) bool {
	t, _ := p.getString("type")
	return t == cni.PluginType
}

func setPlugins(list object, ps []object) object {
	raws := make([]json.RawMessage, len(ps))
	for i, p := range ps {
		raws[i] = p.encodeCompact()
	}
	b, _ := json.Marshal(raws)
	return list.set("plugins", b)
}

// chained is the outcome of planChain.
type chained struct {
	// name is the file to write: the input's, or its .conflist name when a
	// single plugin was converted (the input is then removed).
	name string
	data []byte
	// original: the input had no warren-cni entry, so it is the primary
	// plugin's own content and is what Uninstall must restore.
	original bool
}

// planChain decides what the file called name with content data must
// become so that warren-cni runs last in its chain. changed is false when
// the file already chains warren-cni with e's settings; an entry with other
// settings is updated where it stands.
func planChain(name string, data []byte, e entry) (p chained, changed bool, err error) {
	list, converted, err := asList(name, data)
	if err != nil {
		return chained{}, false, err
	}
	ps, _ := plugins(name, list)
	want := e.raw()
	found := false
	for i, pl := range ps {
		if !isOurs(pl) {
			continue
		}
		found = true
		if !sameJSON(pl.encodeCompact(), want) {
			ps[i], _ = parseObject(want)
			changed = true
		}
	}
	if !found {
		w, _ := parseObject(want)
		ps = append(ps, w)
		changed = true
	}
	if !changed {
		return chained{name: name, data: data}, false, nil
	}
	out := chained{name: name, data: setPlugins(list, ps).encode(), original: !found}
	if converted {
		out.name = conflistName(name)
	}
	return out, true, nil
}

// planUnchain removes every warren-cni entry from the file. found is false
// (and data nil) when there is none. A file that cannot be read as a list
// has no entry of ours.
func planUnchain(name string, data []byte) (out []byte, found bool) {
	list, _, err := asList(name, data)
	if err != nil {
		return nil, false
	}
	ps, _ := plugins(name, list)
	var keep []object
	for _, p := range ps {
		if isOurs(p) {
			found = true
			continue
		}
		keep = append(keep, p)
	}
	if !found {
		return nil, false
	}
	return setPlugins(list, keep).encode(), true
}
