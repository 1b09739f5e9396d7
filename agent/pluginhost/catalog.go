package pluginhost

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"tend.dev/tend/plugins/sdk"
)

// Entry is one plugin binary in the catalog.
type Entry struct {
	// Path is the binary's absolute path.
	Path string
	// SHA256 is the binary's SHA-256, taken when the catalog was loaded;
	// go-plugin refuses to start a binary that no longer matches it.
	SHA256 []byte
}

// Catalog maps a plugin name ("disk", the part of an action before the
// dot) to its binary.
type Catalog map[string]Entry

// Names returns the plugin names, sorted.
func (c Catalog) Names() []string {
	names := make([]string, 0, len(c))
	for n := range c {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// validPluginName is a lowercase name of letters, digits, '-' and '_'
// that starts with a letter or digit, as actions name plugins.
func validPluginName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '-' || s[0] == '_' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// LoadCatalog scans dir for plugin binaries, tend-plugin-<name> files
// that are executable regular files (symlinks are followed), and hashes
// each one now: what is run later must be what was found here. Names
// that are not a plugin name (tend-plugin-x.bak, tend-plugin-X) are
// ignored. A world-writable plugin binary is an error, since anyone could
// make the agent run their code. An empty catalog is not an error.
func LoadCatalog(dir string) (Catalog, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("plugin catalog %s: %w", dir, err)
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("plugin catalog: %w", err)
	}
	cat := Catalog{}
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), sdk.BinaryPrefix)
		if !ok || !validPluginName(name) {
			continue
		}
		path := filepath.Join(abs, e.Name())
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("plugin catalog: %w", err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			continue
		}
		if fi.Mode().Perm()&0o002 != 0 {
			return nil, fmt.Errorf("plugin catalog: %s is writable by anyone (mode %s), so anyone could make the agent run their code; fix it with chmod o-w", path, fi.Mode().Perm())
		}
		sum, err := hashFile(path)
		if err != nil {
			return nil, fmt.Errorf("plugin catalog: %w", err)
		}
		cat[name] = Entry{Path: path, SHA256: sum}
	}
	return cat, nil
}

func hashFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hashing %s: %w", path, err)
	}
	return h.Sum(nil), nil
}
