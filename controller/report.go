package controller

import (
	corev1 "k8s.io/api/core/v1"
)

// problemKey identifies a problem across builds: the same object (uid
// included, so a recreated object is new) with the same complaint.
type problemKey struct {
	obj             ObjectRef
	reason, message string
}

func keyOf(p Problem) problemKey {
	return problemKey{obj: p.Object, reason: p.Reason, message: p.Message}
}

// maxEventMessage keeps Event messages within what the events API
// accepts (1 KiB for events.k8s.io; the core API is laxer).
const maxEventMessage = 1024

// report logs the problems new since the previous build, on every replica,
// and records them as Warning Events when leading.
func (c *Controller) report(problems []Problem) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := make(map[problemKey]struct{}, len(problems))
	for _, p := range problems {
		k := keyOf(p)
		cur[k] = struct{}{}
		if _, seen := c.logged[k]; !seen {
			c.log.Warn("object problem", "kind", p.Object.Kind, "namespace", p.Object.Namespace,
				"name", p.Object.Name, "reason", p.Reason, "message", p.Message)
		}
	}
	c.logged = cur
	c.problems = problems
	c.recordEventsLocked()
}

// recordEventsLocked records a Warning Event for each current problem not
// yet recorded during this leadership. A problem that goes away and comes
// back is recorded again.
func (c *Controller) recordEventsLocked() {
	if !c.leader.Load() || c.recorder == nil {
		return
	}
	next := make(map[problemKey]struct{}, len(c.problems))
	for _, p := range c.problems {
		k := keyOf(p)
		next[k] = struct{}{}
		if _, done := c.reported[k]; done {
			continue
		}
		msg := p.Message
		if len(msg) > maxEventMessage {
			msg = msg[:maxEventMessage-3] + "..."
		}
		ref := &corev1.ObjectReference{
			Kind: p.Object.Kind, APIVersion: p.Object.APIVersion,
			Namespace: p.Object.Namespace, Name: p.Object.Name, UID: p.Object.UID,
		}
		c.recorder.Event(ref, corev1.EventTypeWarning, p.Reason, msg)
	}
	c.reported = next
}
