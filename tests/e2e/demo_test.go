package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// `make demo` runs tend-demo: three failures injected, each remediated and
// verified; it must exit 0 with its summary line.
func TestDemoRuns(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), "tend-demo")
	build := exec.Command("go", "build", "-o", out, "./cmd/tend-demo")
	build.Dir = root
	b, err := build.CombinedOutput()
	require.NoError(t, err, string(b))

	cmd := exec.Command(out, "--bin-dir", binDir, "--examples", filepath.Join(root, "deploy/examples"))
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
	require.Equal(t, "demo: 3/3 incidents remediated and verified", last, string(output))
	require.Contains(t, string(output), "latency, trigger completed → task running on the agent")
}
