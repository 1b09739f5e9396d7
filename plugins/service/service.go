// Package service is the tend-plugin-service action plugin:
// service.restart restarts a systemd unit over D-Bus and waits for the
// job's result.
//
// A unit name without a unit-type suffix gets ".service". The plugin talks
// to the system bus, or as root to systemd's private socket when no bus
// daemon runs, with a new connection per task. On a host without systemd
// (no /run/systemd/system, as sd_booted(3) checks) the action fails and
// says so.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/internal/version"
	"tend.dev/tend/plugins/sdk"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

// ActionRestart is the plugin's one action.
const ActionRestart = "service.restart"

const systemdRunDir = "/run/systemd/system"

// unitManager is the part of a systemd D-Bus connection the plugin uses.
type unitManager interface {
	RestartUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error)
	GetUnitPropertiesContext(ctx context.Context, unit string) (map[string]any, error)
	Close()
}

// Plugin implements sdk.Action.
type Plugin struct {
	log        *slog.Logger
	systemdDir string
	dial       func(ctx context.Context) (unitManager, error)
}

var _ sdk.Action = (*Plugin)(nil)

// New returns the plugin; log may be nil.
func New(log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{log: log, systemdDir: systemdRunDir, dial: dialSystemd}
}

func dialSystemd(ctx context.Context) (unitManager, error) {
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err == nil {
		return conn, nil
	}
	if os.Geteuid() == 0 {
		if direct, derr := sddbus.NewSystemdConnectionContext(ctx); derr == nil {
			return direct, nil
		}
	}
	return nil, err
}

// Describe lists service.restart and its parameter.
func (p *Plugin) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{
		Name:    "service",
		Version: version.Version,
		Actions: []*pluginv1.ActionInfo{{
			Name:        "restart",
			Description: "Restart a systemd unit over D-Bus (job mode \"replace\") and wait for the job's result; success when it is \"done\".",
			Params: []*pluginv1.ParamInfo{
				{Name: "name", Type: "string", Required: true, Description: `the unit, e.g. "nginx" or "nginx.service" (".service" is added when there is no unit-type suffix)`},
			},
		}},
	}, nil
}

// unitName validates a unit name and adds ".service" when it has no
// unit-type suffix (internal/actions, shared with the control plane and
// the agent).
func unitName(name string) (string, error) { return actions.UnitName(name) }

func parseRestart(action string, m map[string]any) (string, error) {
	if action != ActionRestart {
		return "", sdk.UnknownAction(action, ActionRestart)
	}
	r, err := actions.ParseServiceRestart(m)
	return r.Unit, err
}

// Validate checks service.restart's parameters.
func (p *Plugin) Validate(_ context.Context, action string, params map[string]any) error {
	_, err := parseRestart(action, params)
	return err
}

// Execute restarts the unit.
func (p *Plugin) Execute(ctx context.Context, req sdk.ExecuteRequest) (sdk.ExecuteResult, error) {
	unit, err := parseRestart(req.Action, req.Params)
	if err != nil {
		return sdk.ExecuteResult{}, err
	}
	res := p.restart(ctx, unit)
	p.log.Info("service restart", "unit", unit, "task_id", req.TaskID, "success", res.Success)
	return res, nil
}

// ErrNoSystemd is in the output when the host does not run systemd.
var ErrNoSystemd = errors.New("systemd is not running on this host")

func (p *Plugin) restart(ctx context.Context, unit string) sdk.ExecuteResult {
	fail := func(format string, args ...any) sdk.ExecuteResult {
		return sdk.ExecuteResult{Output: fmt.Sprintf("service.restart %s: ", sdk.Quote(unit, 255)) + fmt.Sprintf(format, args...)}
	}
	if fi, err := os.Stat(p.systemdDir); err != nil || !fi.IsDir() {
		return fail("%v (no %s): service.restart needs systemd; for a service that systemd does not manage, use process.restart", ErrNoSystemd, p.systemdDir)
	}
	conn, err := p.dial(ctx)
	if err != nil {
		return fail("cannot reach systemd over D-Bus (system bus, or %s as root): %v", "/run/systemd/private", err)
	}
	defer conn.Close()
	// Buffered: go-systemd blocks its job listener until the result is
	// received.
	ch := make(chan string, 1)
	job, err := conn.RestartUnitContext(ctx, unit, "replace", ch)
	if err != nil {
		return fail("systemd refused the restart: %v", err)
	}
	var result string
	select {
	case result = <-ch:
	case <-ctx.Done():
		return fail("restart job %d was still running at the deadline (%v); systemd goes on with it", job, context.Cause(ctx))
	}
	state := p.state(ctx, conn, unit)
	metrics := map[string]float64{"job_id": float64(job)}
	if pid, ok := state.mainPID(); ok {
		metrics["main_pid"] = float64(pid)
	}
	out := fmt.Sprintf("restarted %s: job %d %s", sdk.Quote(unit, 255), job, result)
	if result != "done" {
		out = fmt.Sprintf("service.restart %s: job %d ended %q, not \"done\"", sdk.Quote(unit, 255), job, result)
	}
	if s := state.String(); s != "" {
		out += "; " + s
	}
	return sdk.ExecuteResult{Success: result == "done", Output: out, Metrics: metrics}
}

// unitState is what the unit looks like after the job.
type unitState map[string]any

func (p *Plugin) state(ctx context.Context, conn unitManager, unit string) unitState {
	props, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return nil
	}
	return props
}

func (s unitState) mainPID() (uint32, bool) {
	pid, ok := s["MainPID"].(uint32)
	return pid, ok && pid > 0
}

func (s unitState) String() string {
	var parts []string
	for _, k := range []string{"ActiveState", "SubState"} {
		if v, ok := s[k].(string); ok {
			parts = append(parts, k+"="+sdk.Quote(v, 64))
		}
	}
	if pid, ok := s.mainPID(); ok {
		parts = append(parts, fmt.Sprintf("MainPID=%d", pid))
	}
	return strings.Join(parts, " ")
}
