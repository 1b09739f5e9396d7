package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// `make demo` runs tend-demo; it must exit 0 with its summary line and
// leave no process behind (it stops what it started by pid).
func TestDemoRuns(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), "tend-demo")
	build := exec.Command("go", "build", "-o", out, "./cmd/tend-demo")
	build.Dir = root
	b, err := build.CombinedOutput()
	require.NoError(t, err, string(b))

	cmd := exec.Command(out, "--bin-dir", binDir, "--examples", filepath.Join(root, "deploy/examples"), "--watch", "4s")
	done := make(chan struct{})
	var output []byte
	go func() { output, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("demo did not finish within 2 minutes")
	}
	require.NoError(t, err, string(output))
	lines := strings.Split(strings.TrimSpace(string(output)), "\n")
	last := lines[len(lines)-1]
	require.Contains(t, last, "demo: 3/3 agents connected and reporting")
	require.Contains(t, string(output), "detected: demo-2/demo-http is critical")
}
