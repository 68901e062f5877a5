// Package netns runs code and opens sockets inside Linux network namespaces,
// which is how the agent reaches into each enrolled pod without running in it.
package netns
