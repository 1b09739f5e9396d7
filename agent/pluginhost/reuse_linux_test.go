//go:build linux

package pluginhost

import (
	"log/slog"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"github.com/stretchr/testify/require"

	"tend.dev/tend/plugins/sdk"
)

// A plugin that exited and was reaped gave its pid back; killing it later
// (on the next call, or at Close) must not kill the process group or
// session of whatever process got that pid since.
func TestKillNeverSignalsAReusedPid(t *testing.T) {
	// The plugin: a process that has exited and been reaped.
	dead := exec.Command("/bin/true")
	require.NoError(t, dead.Run())
	// The process that got "its" pid: a group and session leader, as a
	// plugin would be.
	other := exec.Command("/bin/sleep", "300")
	other.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	require.NoError(t, other.Start())
	done := make(chan struct{})
	go func() { _ = other.Wait(); close(done) }()
	t.Cleanup(func() { _ = other.Process.Kill(); <-done })

	h := New(Catalog{}, slog.New(slog.DiscardHandler))
	client := plugin.NewClient(&plugin.ClientConfig{HandshakeConfig: sdk.Handshake, VersionedPlugins: sdk.VersionedPlugins(nil), Cmd: exec.Command("/bin/true")})
	inst := &instance{name: "reused", client: client, pid: other.Process.Pid, proc: dead.Process}
	require.False(t, ownsPid(inst), "the reaped plugin's pid names another process")
	h.kill(inst, "test") // signals nothing: kill decides by ownsPid

	// The plugin's own live process is killed, group and session.
	inst = &instance{name: "live", client: client, pid: other.Process.Pid, proc: other.Process}
	require.True(t, ownsPid(inst))
	h.kill(inst, "test")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin's own process was not killed")
	}
}
