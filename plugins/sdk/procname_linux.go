//go:build linux

package sdk

import (
	"os"
	"path/filepath"
)

// fixProcName gives the plugin process its own name back. The agent runs a
// plugin from a verified copy as /proc/self/fd/3 (agent/pluginhost), so
// the kernel names it "3" in ps and top; argv[0] is still the binary's
// path, and its base name (at most 15 bytes, as the kernel keeps) becomes
// the process's name again.
func fixProcName() {
	name := filepath.Base(os.Args[0])
	if len(name) > 15 {
		name = name[:15]
	}
	if name == "" || name == "." || name == "/" {
		return
	}
	if cur, err := os.ReadFile("/proc/self/comm"); err == nil && string(cur) == name+"\n" {
		return
	}
	_ = os.WriteFile("/proc/self/comm", []byte(name), 0)
}
