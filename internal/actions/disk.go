package actions

import (
	"path/filepath"
	"strings"
	"time"
)

// disk.cleanup.

// Modes of disk.cleanup.
const (
	ModeDelete     = "delete"
	ModeQuarantine = "quarantine"
)

// DefaultQuarantineTTL is how long quarantined files are kept by default.
const DefaultQuarantineTTL = 24 * time.Hour

// DiskCleanupParams are disk.cleanup's params.
type DiskCleanupParams struct {
	Path          string
	Pattern       string
	OlderThan     time.Duration
	Mode          string
	Recursive     bool
	QuarantineTTL time.Duration
}

// ParseDiskCleanup reads disk.cleanup's params.
func ParseDiskCleanup(m map[string]any) (DiskCleanupParams, error) {
	p := NewParams(m)
	c := parseDiskCleanup(p)
	return c, p.Err()
}

func parseDiskCleanup(p *Params) DiskCleanupParams {
	c := DiskCleanupParams{
		Path:          p.Path("path"),
		Pattern:       p.OptString("pattern", "*"),
		OlderThan:     p.OptDuration("olderThan", 0),
		Mode:          p.OptString("mode", ModeDelete),
		Recursive:     p.OptBool("recursive", false),
		QuarantineTTL: p.OptDuration("quarantineTTL", DefaultQuarantineTTL),
	}
	if c.Path == "/" {
		p.Problem("path", `refusing to clean "/"; name the directory that holds the files`)
	}
	p.NoShellMeta("path", c.Path)
	switch {
	case c.Pattern == "":
		p.Problem("pattern", `must not be empty; "*" matches every name`)
	case strings.ContainsRune(c.Pattern, '/'):
		p.Problem("pattern", "is matched against base names and must not contain '/', got %s", Quote(c.Pattern, 200))
	case strings.HasPrefix(c.Pattern, "-"):
		p.Problem("pattern", "must not start with '-', got %s", Quote(c.Pattern, 200))
	case strings.ContainsAny(c.Pattern, ShellMeta):
		p.NoShellMeta("pattern", c.Pattern)
	default:
		if _, err := filepath.Match(c.Pattern, ""); err != nil {
			p.Problem("pattern", "%s is not a valid glob (path/filepath.Match): %v", Quote(c.Pattern, 200), err)
		}
	}
	if c.Mode != ModeDelete && c.Mode != ModeQuarantine {
		p.Problem("mode", "want %q or %q, got %s", ModeDelete, ModeQuarantine, Quote(c.Mode, 64))
	}
	return c
}
