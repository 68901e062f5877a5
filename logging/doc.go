// Package logging gives each component of the agent its own log/slog level,
// changeable at run time with Istio's level syntax ("info,proxy:debug").
package logging
