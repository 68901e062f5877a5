// Package flow describes one proxied connection — its direction, outcome and
// deny reason — in the single vocabulary shared by classification,
// authorization, metrics and the access log.
package flow
