package controller

// selectorIndex finds the label selectors that select a set of labels
// without testing every selector: each selector is filed under one of its
// own key=value pairs (its anchor), and only selectors filed under one of
// the labels' pairs can select them. A pod with a handful of labels then
// costs a handful of map lookups however many services or policies its
// namespace holds.
type selectorIndex[T any] struct {
	m map[anchor][]selectorEntry[T]
}

type anchor struct{ namespace, key, value string }

type selectorEntry[T any] struct {
	selector map[string]string
	value    T
}

// add files value under selector in namespace. An empty selector is not
// filed: callers decide what one means (Kubernetes services: nothing;
// Istio policies: the whole namespace).
func (ix *selectorIndex[T]) add(namespace string, selector map[string]string, value T) {
	if len(selector) == 0 {
		return
	}
	// The smallest key, so that the anchor does not depend on map order.
	first := true
	var a anchor
	for k, v := range selector {
		if first || k < a.key {
			a, first = anchor{namespace: namespace, key: k, value: v}, false
		}
	}
	if ix.m == nil {
		ix.m = make(map[anchor][]selectorEntry[T])
	}
	ix.m[a] = append(ix.m[a], selectorEntry[T]{selector: selector, value: value})
}

// appendSelecting appends to dst the values whose selector in namespace
// selects labels, in no particular order.
func (ix *selectorIndex[T]) appendSelecting(dst []T, namespace string, labels map[string]string) []T {
	if len(ix.m) == 0 {
		return dst
	}
	for k, v := range labels {
		for _, e := range ix.m[anchor{namespace: namespace, key: k, value: v}] {
			if selects(e.selector, labels) {
				dst = append(dst, e.value)
			}
		}
	}
	return dst
}

// selects reports whether every pair of selector is in labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
