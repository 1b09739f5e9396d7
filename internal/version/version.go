// Package version holds the build version of every Tend binary.
package version

// Version is set at build time with -ldflags "-X tend.dev/tend/internal/version.Version=...".
var Version = "0.1.0-dev"
