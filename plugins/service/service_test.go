package service

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/plugins/sdk"
)

func TestParseRestart(t *testing.T) {
	tests := []struct {
		name   string
		action string
		params map[string]any
		want   string
		err    string
	}{
		{name: "bare name", params: map[string]any{"name": "nginx"}, want: "nginx.service"},
		{name: "with suffix", params: map[string]any{"name": "nginx.service"}, want: "nginx.service"},
		{name: "template instance", params: map[string]any{"name": "getty@tty1"}, want: "getty@tty1.service"},
		{name: "socket", params: map[string]any{"name": "docker.socket"}, want: "docker.socket"},
		{name: "dotted name", params: map[string]any{"name": "php7.4-fpm"}, want: "php7.4-fpm.service"},
		{name: "missing", params: map[string]any{}, err: "param name: required"},
		{name: "empty", params: map[string]any{"name": ""}, err: "param name: required, and must not be empty"},
		{name: "number", params: map[string]any{"name": 7.0}, err: "param name: want a string, got number"},
		{name: "space", params: map[string]any{"name": "nginx; reboot"}, err: `param name: unit name "nginx; reboot" has ';'`},
		{name: "slash", params: map[string]any{"name": "../nginx"}, err: `has '/'`},
		{name: "leading dot", params: map[string]any{"name": ".service"}, err: `must not start with '.'`},
		{name: "too long", params: map[string]any{"name": strings.Repeat("a", 256)}, err: "longer than 255 bytes"},
		{name: "unknown", params: map[string]any{"name": "nginx", "mode": "isolate"}, err: "param mode: unknown parameter (known: name)"},
		{name: "unknown action", action: "service.stop", params: map[string]any{"name": "nginx"}, err: `unknown action "service.stop" (this plugin serves: service.restart)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			action := tt.action
			if action == "" {
				action = ActionRestart
			}
			got, err := parseRestart(action, tt.params)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// fakeSystemd answers a restart with result, after delay.
type fakeSystemd struct {
	result     string
	delay      time.Duration
	restartErr error
	props      map[string]any
	restarted  []string
	closed     bool
}

func (f *fakeSystemd) RestartUnitContext(_ context.Context, name, mode string, ch chan<- string) (int, error) {
	if f.restartErr != nil {
		return 0, f.restartErr
	}
	f.restarted = append(f.restarted, name+" "+mode)
	go func() {
		time.Sleep(f.delay)
		ch <- f.result
	}()
	return 42, nil
}

func (f *fakeSystemd) GetUnitPropertiesContext(context.Context, string) (map[string]any, error) {
	return f.props, nil
}

func (f *fakeSystemd) Close() { f.closed = true }

func withFake(t *testing.T, f *fakeSystemd) *Plugin {
	p := New(nil)
	p.systemdDir = t.TempDir()
	p.dial = func(context.Context) (unitManager, error) { return f, nil }
	return p
}

func execute(t *testing.T, p *Plugin, timeout time.Duration, name string) sdk.ExecuteResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := p.Execute(ctx, sdk.ExecuteRequest{TaskID: "t1", Action: ActionRestart, Params: map[string]any{"name": name}})
	require.NoError(t, err)
	return res
}

func TestRestartDone(t *testing.T) {
	f := &fakeSystemd{result: "done", props: map[string]any{"ActiveState": "active", "SubState": "running", "MainPID": uint32(1234)}}
	res := execute(t, withFake(t, f), 5*time.Second, "nginx")
	require.True(t, res.Success, res.Output)
	require.Equal(t, []string{"nginx.service replace"}, f.restarted)
	require.Equal(t, `restarted "nginx.service": job 42 done; ActiveState="active" SubState="running" MainPID=1234`, res.Output)
	require.Equal(t, 1234.0, res.Metrics["main_pid"])
	require.True(t, f.closed)
}

func TestRestartFailed(t *testing.T) {
	f := &fakeSystemd{result: "failed", props: map[string]any{"ActiveState": "failed", "SubState": "failed", "MainPID": uint32(0)}}
	res := execute(t, withFake(t, f), 5*time.Second, "nginx")
	require.False(t, res.Success)
	require.Equal(t, `service.restart "nginx.service": job 42 ended "failed", not "done"; ActiveState="failed" SubState="failed"`, res.Output)
}

func TestRestartRefused(t *testing.T) {
	f := &fakeSystemd{restartErr: errors.New("Unit nope.service not found.")}
	res := execute(t, withFake(t, f), 5*time.Second, "nope")
	require.False(t, res.Success)
	require.Contains(t, res.Output, "systemd refused the restart: Unit nope.service not found.")
}

func TestRestartDeadline(t *testing.T) {
	f := &fakeSystemd{result: "done", delay: 2 * time.Second}
	start := time.Now()
	res := execute(t, withFake(t, f), 200*time.Millisecond, "slow")
	require.Less(t, time.Since(start), time.Second)
	require.False(t, res.Success)
	require.Contains(t, res.Output, "restart job 42 was still running at the deadline")
}

func TestDialFails(t *testing.T) {
	p := New(nil)
	p.systemdDir = t.TempDir()
	p.dial = func(context.Context) (unitManager, error) {
		return nil, errors.New("dial unix /run/dbus/system_bus_socket: connect: no such file or directory")
	}
	res := execute(t, p, 5*time.Second, "nginx")
	require.False(t, res.Success)
	require.Contains(t, res.Output, "cannot reach systemd over D-Bus")
}

func TestNoSystemd(t *testing.T) {
	p := New(nil)
	p.systemdDir = filepath.Join(t.TempDir(), "run", "systemd", "system")
	p.dial = func(context.Context) (unitManager, error) {
		t.Fatal("must not dial without systemd")
		return nil, nil
	}
	res := execute(t, p, 5*time.Second, "nginx")
	require.False(t, res.Success)
	require.Contains(t, res.Output, `service.restart "nginx.service": systemd is not running on this host`)
	require.Contains(t, res.Output, "use process.restart")
}

func TestThroughGRPC(t *testing.T) {
	f := &fakeSystemd{result: "done"}
	c := sdk.TestClient(t, withFake(t, f))
	require.ErrorIs(t, c.Validate(context.Background(), ActionRestart, map[string]any{"name": "a b"}), sdk.ErrInvalidParams)
	res, err := c.Execute(context.Background(), sdk.ExecuteRequest{TaskID: "t", Action: ActionRestart, Params: map[string]any{"name": "nginx"}, Timeout: 5 * time.Second})
	require.NoError(t, err)
	require.True(t, res.Success, res.Output)
	d, err := c.Describe(context.Background())
	require.NoError(t, err)
	require.Equal(t, "service", d.GetName())
}
