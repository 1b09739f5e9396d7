// Package logging sets up structured logs (log/slog, text to stderr).
package logging

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// New returns a text logger on stderr at the given level, tagged with the
// binary's name.
func New(level, binary string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "info", "":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", level)
	}
	h := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})
	return slog.New(h).With("bin", binary), nil
}
