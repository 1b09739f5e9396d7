// Package actions describes the parameters of Tend's built-in actions in
// one place, shared by everything that reads them:
//
//   - the control plane, which validates a policy's remediation params
//     when the policy is applied (internal/policy), before any task is
//     signed;
//   - the agent, which checks a task's params again before the plugin
//     sees them (agent/tasks);
//   - the plugins themselves, which parse their params with these
//     functions (plugins/process, service, disk, exec).
//
// It also holds Params, the typed parameter reader that plugins/sdk
// exports to third-party plugins. It depends on the standard library only,
// so tendctl and the control plane get the schemas without a plugin
// runtime.
package actions

import (
	"slices"
)

// The built-in actions.
const (
	ProcessRestart = "process.restart"
	ProcessKill    = "process.kill"
	ServiceRestart = "service.restart"
	DiskCleanup    = "disk.cleanup"
	ExecRun        = "exec.run"
)

// parsers read each built-in action's params from a Params.
var parsers = map[string]func(*Params) any{
	ProcessRestart: func(p *Params) any { return parseProcessRestart(p) },
	ProcessKill:    func(p *Params) any { return parseProcessKill(p) },
	ServiceRestart: func(p *Params) any { return parseServiceRestart(p) },
	DiskCleanup:    func(p *Params) any { return parseDiskCleanup(p) },
	ExecRun:        func(p *Params) any { return parseExecRun(p) },
}

// Builtin lists the built-in actions, sorted.
func Builtin() []string {
	out := make([]string, 0, len(parsers))
	for a := range parsers {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// IsBuiltin reports whether action is a built-in action.
func IsBuiltin(action string) bool {
	_, ok := parsers[action]
	return ok
}

// Parse reads the params of a built-in action: a ProcessRestartParams,
// ProcessKillParams, ServiceRestartParams, DiskCleanupParams or
// ExecRunParams. Errors wrap ErrInvalidParams and list every problem
// (see Problems), or wrap ErrUnknownAction for an action that is not built
// in.
func Parse(action string, params map[string]any) (any, error) {
	parse, ok := parsers[action]
	if !ok {
		return nil, UnknownAction(action, Builtin()...)
	}
	p := NewParams(params)
	v := parse(p)
	return v, p.Err()
}

// Validate is Parse without the result.
func Validate(action string, params map[string]any) error {
	_, err := Parse(action, params)
	return err
}

// ParamNames lists the top-level params a built-in action takes, sorted;
// false for an action that is not built in.
func ParamNames(action string) ([]string, bool) {
	parse, ok := parsers[action]
	if !ok {
		return nil, false
	}
	p := NewParams(nil)
	parse(p)
	return p.Known(), true
}
