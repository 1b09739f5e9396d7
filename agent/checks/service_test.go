package checks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func TestUnitName(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{"nginx", "nginx.service", ""},
		{"nginx.service", "nginx.service", ""},
		{"docker.socket", "docker.socket", ""},
		{"getty@tty1", "getty@tty1.service", ""},
		{"var-log.mount", "var-log.mount", ""},
		{"my.app", "my.app.service", ""},
		{".service", ".service.service", ""},
		{"", "", "name is empty"},
		{"nginx; rm -rf /", "", "does not allow"},
		{"a/b", "", "does not allow"},
		{"ünicode", "", "does not allow"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := unitName(tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				_, err := New(serviceSpec(tt.in))
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestServiceResult(t *testing.T) {
	tests := []struct {
		name   string
		props  map[string]any
		status agentv1.CheckStatus
		output string
	}{
		{"running", map[string]any{"LoadState": "loaded", "ActiveState": "active", "SubState": "running"}, statusOK, `nginx.service is active ("running")`},
		{"exited oneshot", map[string]any{"LoadState": "loaded", "ActiveState": "active", "SubState": "exited"}, statusOK, "is active"},
		{"failed", map[string]any{"LoadState": "loaded", "ActiveState": "failed", "SubState": "failed"}, statusCritical, `ActiveState="failed" SubState="failed"`},
		{"inactive", map[string]any{"LoadState": "loaded", "ActiveState": "inactive", "SubState": "dead"}, statusCritical, `ActiveState="inactive" SubState="dead"`},
		{"activating", map[string]any{"LoadState": "loaded", "ActiveState": "activating", "SubState": "start"}, statusCritical, "is not active"},
		{"not installed", map[string]any{"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead"}, statusCritical, "no such unit is installed"},
		{"no state", map[string]any{}, statusUnknown, "no ActiveState"},
		{"wrong type", map[string]any{"ActiveState": 3}, statusUnknown, "no ActiveState"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := serviceResult("nginx.service", tt.props)
			require.Equal(t, tt.status, res.Status, res.Output)
			require.Contains(t, res.Output, tt.output)
		})
	}
}

type fakeUnits struct {
	props  map[string]any
	err    error
	closed bool
}

func (f *fakeUnits) GetUnitPropertiesContext(ctx context.Context, unit string) (map[string]any, error) {
	return f.props, f.err
}
func (f *fakeUnits) Close() { f.closed = true }

// TestServiceWithFakeSystemd covers the D-Bus paths with a fake connection.
func TestServiceWithFakeSystemd(t *testing.T) {
	runDir := t.TempDir()
	tests := []struct {
		name    string
		dialErr error
		units   *fakeUnits
		status  agentv1.CheckStatus
		output  string
	}{
		{"active", nil, &fakeUnits{props: map[string]any{"ActiveState": "active", "SubState": "running"}}, statusOK, "is active"},
		{"bus unreachable", errors.New("dial unix /run/dbus/system_bus_socket: connect: no such file or directory"), nil, statusUnknown, "cannot reach systemd over D-Bus"},
		{"call fails", nil, &fakeUnits{err: errors.New("access denied")}, statusUnknown, "cannot read the state of nginx.service from systemd: access denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustNew(t, serviceSpec("nginx")).(*serviceCheck)
			c.systemdDir = runDir
			c.dial = func(ctx context.Context) (unitProps, error) {
				if tt.dialErr != nil {
					return nil, tt.dialErr
				}
				return tt.units, nil
			}
			res := run(t, c, time.Second)
			require.Equal(t, tt.status, res.Status, res.Output)
			require.Contains(t, res.Output, tt.output)
			if tt.units != nil {
				require.True(t, tt.units.closed, "the connection must be closed")
			}
		})
	}
}

// TestServiceOnThisHost runs the real check. Without systemd (containers,
// most CI) it must say so clearly; with systemd it checks real units.
func TestServiceOnThisHost(t *testing.T) {
	fi, err := os.Stat(systemdRunDir)
	if err != nil || !fi.IsDir() {
		res := run(t, mustNew(t, serviceSpec("nginx")), 5*time.Second)
		require.Equal(t, statusUnknown, res.Status, res.Output)
		require.Contains(t, res.Output, "systemd is not running on this host")
		require.Contains(t, res.Output, "service checks need systemd")
		require.Contains(t, res.Output, "nginx.service")
		return
	}
	// systemd runs: PID 1's own scope is always active, and a made-up
	// unit is not installed.
	res := run(t, mustNew(t, serviceSpec("init.scope")), 5*time.Second)
	require.Equal(t, statusOK, res.Status, res.Output)
	res = run(t, mustNew(t, serviceSpec("tend-no-such-unit-"+filepath.Base(t.TempDir()))), 5*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "no such unit is installed")
}

// TestServiceNoSystemdDir: the "not running" answer does not depend on the
// host: point the check at a directory that does not exist.
func TestServiceNoSystemdDir(t *testing.T) {
	c := mustNew(t, serviceSpec("nginx")).(*serviceCheck)
	c.systemdDir = filepath.Join(t.TempDir(), "missing")
	c.dial = func(ctx context.Context) (unitProps, error) {
		t.Fatal("must not dial D-Bus without systemd")
		return nil, nil
	}
	res := run(t, c, time.Second)
	require.Equal(t, statusUnknown, res.Status)
	require.Contains(t, res.Output, "systemd is not running on this host")
}
