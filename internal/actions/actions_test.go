package actions_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/plugins/disk"
	"tend.dev/tend/plugins/exec"
	"tend.dev/tend/plugins/process"
	"tend.dev/tend/plugins/sdk"
	"tend.dev/tend/plugins/service"
)

func TestParamNames(t *testing.T) {
	want := map[string][]string{
		actions.ProcessRestart: {"command", "confirm", "grace", "match"},
		actions.ProcessKill:    {"match", "signal"},
		actions.ServiceRestart: {"name"},
		actions.DiskCleanup:    {"mode", "olderThan", "path", "pattern", "quarantineTTL", "recursive"},
		actions.ExecRun:        {"argv"},
	}
	require.Equal(t, []string{"disk.cleanup", "exec.run", "process.kill", "process.restart", "service.restart"}, actions.Builtin())
	for a, names := range want {
		got, ok := actions.ParamNames(a)
		require.True(t, ok, a)
		require.Equal(t, names, got, a)
		require.True(t, actions.IsBuiltin(a))
	}
	_, ok := actions.ParamNames("custom.x")
	require.False(t, ok)
	require.ErrorIs(t, actions.Validate("custom.x", nil), actions.ErrUnknownAction)
}

// The plugins describe the parameters the schemas read, and validate with
// them: one place for each action's params.
func TestPluginsShareTheSchemas(t *testing.T) {
	ctx := context.Background()
	for _, p := range []sdk.Action{process.New(nil), service.New(nil), disk.New(nil), exec.New(nil)} {
		d, err := p.Describe(ctx)
		require.NoError(t, err)
		for _, a := range d.GetActions() {
			full := d.GetName() + "." + a.GetName()
			var described []string
			for _, pi := range a.GetParams() {
				described = append(described, pi.GetName())
			}
			slices.Sort(described)
			names, ok := actions.ParamNames(full)
			require.True(t, ok, full)
			require.Equal(t, names, described, "%s: Describe and the schema disagree", full)
			// Both refuse the same thing, with the same words.
			bad := map[string]any{"nope": true}
			perr, serr := p.Validate(ctx, full, bad), actions.Validate(full, bad)
			require.ErrorIs(t, perr, sdk.ErrInvalidParams)
			require.EqualError(t, perr, serr.Error())
		}
	}
}

func TestHostileStrings(t *testing.T) {
	for _, tc := range []struct {
		action string
		params map[string]any
		param  string
	}{
		{actions.ExecRun, map[string]any{"argv": []any{"/bin/echo", "a\nb"}}, "argv[1]"},
		{actions.ExecRun, map[string]any{"argv": []any{"/bin/echo", "\x1b[2J"}}, "argv[1]"},
		{actions.ExecRun, map[string]any{"argv": []any{"/bin/echo", "a\x00"}}, "argv[1]"},
		{actions.ProcessRestart, map[string]any{"match": map[string]any{"name": "x\ry"}, "command": []any{"/bin/true"}}, "match.name"},
		{actions.ProcessRestart, map[string]any{"match": map[string]any{"name": "-x"}, "command": []any{"/bin/true"}}, "match.name"},
		{actions.ProcessRestart, map[string]any{"match": map[string]any{"pidfile": "-x.pid"}, "command": []any{"/bin/true"}}, "match.pidfile"},
		{actions.ProcessKill, map[string]any{"match": map[string]any{"pidfile": "/run/x\n.pid"}}, "match.pidfile"},
		{actions.DiskCleanup, map[string]any{"path": "/var/log/\tapp"}, "path"},
		{actions.DiskCleanup, map[string]any{"path": "/var/log", "pattern": "*\n"}, "pattern"},
		{actions.DiskCleanup, map[string]any{"path": "/var/log", "pattern": "-rf"}, "pattern"},
		{actions.ServiceRestart, map[string]any{"name": "nginx\n"}, "name"},
		{actions.ServiceRestart, map[string]any{"name": "--no-block"}, "name"},
		{actions.ServiceRestart, map[string]any{"name": "$(reboot)"}, "name"},
	} {
		err := actions.Validate(tc.action, tc.params)
		require.ErrorIs(t, err, actions.ErrInvalidParams, "%s %v", tc.action, tc.params)
		ps := actions.Problems(err)
		require.Len(t, ps, 1, "%v", err)
		require.Equal(t, tc.param, ps[0].Param, "%v", err)
	}
	// Shell metacharacters are not special to anything Tend runs: they
	// are data, used literally.
	require.NoError(t, actions.Validate(actions.ExecRun, map[string]any{"argv": []any{"/usr/bin/printf", "%s", "; $(id) `id` | & > <"}}))
}

func TestProblems(t *testing.T) {
	_, err := actions.Parse(actions.ProcessRestart, map[string]any{"match": map[string]any{"pidfile": 1.0}, "extra": 1.0})
	require.Equal(t, []actions.Problem{
		{Param: "match.pidfile", Text: "want a string, got number"},
		{Param: "command", Text: "required"},
		{Param: "extra", Text: "unknown parameter (known: command, confirm, grace, match)"},
	}, actions.Problems(err))
	require.EqualError(t, err, "invalid params: param match.pidfile: want a string, got number; param command: required; param extra: unknown parameter (known: command, confirm, grace, match)")
	require.Nil(t, actions.Problems(errors.New("x")))
	require.Equal(t, []actions.Problem{{Text: "whole"}}, actions.Problems(actions.InvalidParamsf("whole")))
	require.EqualError(t, actions.InvalidParamsf("whole"), "invalid params: whole")
}
