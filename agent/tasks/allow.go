package tasks

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"

	"tend.dev/tend/agent/config"
	"tend.dev/tend/internal/actions"
	"tend.dev/tend/internal/task"
)

// Built-in actions whose parameters the allow-list understands.
const (
	ActionProcessRestart = actions.ProcessRestart
	ActionProcessKill    = actions.ProcessKill
	ActionServiceRestart = actions.ServiceRestart
	ActionDiskCleanup    = actions.DiskCleanup
	ActionExecRun        = actions.ExecRun
)

// knownParams are the parameters each built-in action takes, from the
// actions' schemas (internal/actions, which the plugins use too); any
// other parameter is refused, so that a task cannot smuggle in an option
// (an environment, a working directory) the host never allowed.
func knownParams(action string) ([]string, bool) { return actions.ParamNames(action) }

// ruleFields are the agent.yaml fields that apply to each built-in action.
var ruleFields = map[string][]string{
	ActionProcessRestart: {"commands"},
	ActionProcessKill:    {"signals"},
	ActionServiceRestart: {"units"},
	ActionDiskCleanup:    {"paths"},
	ActionExecRun:        {"commands"},
}

// signalNames are the signals process.kill may be limited to, without the
// SIG prefix.
var signalNames = []string{"HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP"}

// shellMeta are characters refused in paths, patterns, unit and process
// names. Nothing in Tend ever runs through a shell; refusing them anyway is
// defence in depth against a plugin or a tool that one day does.
const shellMeta = ";&|$`<>'\"\\"

// AllowList is the host's own decision of what may be done to it, from
// agent.yaml's actions: an action that is absent is denied, and each
// built-in action's parameters must fit its rule. The zero value denies
// everything.
type AllowList struct {
	rules map[string]config.ActionRule
}

// NewAllowList validates the rules from agent.yaml and returns the
// allow-list. Errors name the field and say what to write instead.
func NewAllowList(actions map[string]config.ActionRule) (AllowList, error) {
	var errs []error
	rules := make(map[string]config.ActionRule, len(actions))
	names := make([]string, 0, len(actions))
	for name := range actions {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		r := actions[name]
		field := "actions." + name
		set := map[string]bool{"commands": len(r.Commands) > 0, "paths": len(r.Paths) > 0, "units": len(r.Units) > 0, "signals": len(r.Signals) > 0}
		applies, builtin := ruleFields[name]
		for _, f := range []string{"commands", "paths", "units", "signals"} {
			if set[f] && !slices.Contains(applies, f) {
				if builtin {
					errs = append(errs, fmt.Errorf("%s.%s: does not apply to %s (it takes %s)", field, f, name, strings.Join(applies, ", ")))
				} else {
					errs = append(errs, fmt.Errorf("%s.%s: %s is not a built-in action, so only its presence can be allowed ({})", field, f, name))
				}
			}
		}
		var out config.ActionRule
		for i, argv := range r.Commands {
			f := fmt.Sprintf("%s.commands[%d]", field, i)
			if len(argv) == 0 {
				errs = append(errs, fmt.Errorf("%s: empty command", f))
				continue
			}
			if !filepath.IsAbs(argv[0]) {
				errs = append(errs, fmt.Errorf("%s: program %q must be an absolute path", f, argv[0]))
			}
			for j, a := range argv {
				if c := controlChar(a); c >= 0 {
					errs = append(errs, fmt.Errorf("%s[%d]: %q contains control character %#x", f, j, a, c))
				}
			}
			out.Commands = append(out.Commands, slices.Clone(argv))
		}
		for i, p := range r.Paths {
			f := fmt.Sprintf("%s.paths[%d]", field, i)
			switch {
			case !filepath.IsAbs(p):
				errs = append(errs, fmt.Errorf("%s: %q must be an absolute path", f, p))
			case controlChar(p) >= 0 || strings.ContainsAny(p, shellMeta):
				errs = append(errs, fmt.Errorf("%s: %q contains a control or shell character", f, p))
			default:
				out.Paths = append(out.Paths, filepath.Clean(p))
			}
		}
		for i, u := range r.Units {
			if err := checkName("unit", u); err != nil {
				errs = append(errs, fmt.Errorf("%s.units[%d]: %w", field, i, err))
				continue
			}
			out.Units = append(out.Units, u)
		}
		for i, pf := range r.Pidfiles {
			f := fmt.Sprintf("%s.pidfiles[%d]", field, i)
			if err := checkPathForm(pf); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f, err))
				continue
			}
			out.Pidfiles = append(out.Pidfiles, pf)
		}
		for i, n := range r.Names {
			if err := checkName("process name", n); err != nil {
				errs = append(errs, fmt.Errorf("%s.names[%d]: %w", field, i, err))
				continue
			}
			out.Names = append(out.Names, n)
		}
		for i, s := range r.Signals {
			n := normalizeSignal(s)
			if !slices.Contains(signalNames, n) {
				errs = append(errs, fmt.Errorf("%s.signals[%d]: unknown signal %q: use one of %s", field, i, s, strings.Join(signalNames, ", ")))
				continue
			}
			out.Signals = append(out.Signals, n)
		}
		rules[name] = out
	}
	if len(errs) > 0 {
		return AllowList{}, errors.Join(errs...)
	}
	return AllowList{rules: rules}, nil
}

// Actions lists the allowed actions, sorted.
func (a AllowList) Actions() []string {
	out := make([]string, 0, len(a.rules))
	for name := range a.rules {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func notAllowed(format string, args ...any) error {
	return task.Reject(task.CodeNotAllowed, format, args...)
}

// Check decides whether action with params is allowed on this host. A
// refusal is a *task.RejectError with code not_allowed whose message names
// the rule. Every string in params (keys too) is treated as hostile.
func (a AllowList) Check(action string, params *structpb.Struct) error {
	rule, ok := a.rules[action]
	if !ok {
		return notAllowed("action %s not in the agent's allow-list (agent.yaml actions:)", action)
	}
	if err := checkStrings("params", structpb.NewStructValue(params)); err != nil {
		return notAllowed("%s %s", action, err)
	}
	fields := params.GetFields()
	if known, builtin := knownParams(action); builtin {
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if !slices.Contains(known, k) {
				return notAllowed("%s parameter %q is not one this action takes (%s)", action, k, strings.Join(known, ", "))
			}
		}
	}
	if err := checkRule(action, fields, rule); err != nil {
		return err
	}
	// Allowed by the host; now well-formed by the action's schema, the
	// same the control plane checked before signing and the plugin checks
	// again (a task from a control plane that skipped it stops here).
	if actions.IsBuiltin(action) {
		if err := actions.Validate(action, params.AsMap()); err != nil {
			return task.Reject(task.CodeInvalidParams, "%s %v", action, err)
		}
	}
	return nil
}

// checkRule checks the params of a built-in action against the host's
// rule for it.
func checkRule(action string, fields map[string]*structpb.Value, rule config.ActionRule) error {
	switch action {
	case ActionProcessRestart:
		if err := checkArgv(action, "command", fields["command"], rule.Commands); err != nil {
			return err
		}
		return checkMatch(action, fields["match"], rule)
	case ActionExecRun:
		return checkArgv(action, "argv", fields["argv"], rule.Commands)
	case ActionDiskCleanup:
		return checkCleanup(fields, rule.Paths)
	case ActionServiceRestart:
		name, ok := stringParam(fields["name"])
		if !ok || name == "" {
			return notAllowed("service.restart: parameter name must be a unit name")
		}
		if err := checkName("unit", name); err != nil {
			return notAllowed("service.restart %v", err)
		}
		if len(rule.Units) == 0 {
			return notAllowed("service.restart unit %s: this host allows no units (agent.yaml actions.service.restart.units)", name)
		}
		if !slices.Contains(rule.Units, name) {
			return notAllowed("service.restart unit %s not an allowed unit (%s)", name, strings.Join(rule.Units, ", "))
		}
	case ActionProcessKill:
		if err := checkMatch(action, fields["match"], rule); err != nil {
			return err
		}
		if len(rule.Signals) > 0 {
			sig, ok := stringParam(fields["signal"])
			if !ok || sig == "" {
				return notAllowed("process.kill: parameter signal is required, this host allows only %s", strings.Join(rule.Signals, ", "))
			}
			if !slices.Contains(rule.Signals, normalizeSignal(sig)) {
				return notAllowed("process.kill signal %s not an allowed signal (%s)", sig, strings.Join(rule.Signals, ", "))
			}
		}
	}
	return nil
}

// checkArgv: the argv must equal one allowed command exactly, element by
// element, byte by byte.
func checkArgv(action, param string, v *structpb.Value, allowed [][]string) error {
	argv, ok := stringList(v)
	if !ok || len(argv) == 0 {
		return notAllowed("%s: parameter %s must be a non-empty list of strings", action, param)
	}
	if len(allowed) == 0 {
		return notAllowed("%s %s %s: this host allows no commands (agent.yaml actions.%s.commands)", action, param, quoteArgv(argv), action)
	}
	for _, a := range allowed {
		if slices.Equal(a, argv) {
			return nil
		}
	}
	return notAllowed("%s %s %s is not an allowed command (agent.yaml actions.%s.commands)", action, param, quoteArgv(argv), action)
}

func quoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	return "[" + strings.Join(q, " ") + "]"
}

// checkMatch validates the process match {name | pidfile}: which process
// may be stopped is the host's decision too, so the pidfile or the name
// must be one the rule lists.
func checkMatch(action string, v *structpb.Value, rule config.ActionRule) error {
	if v == nil {
		return notAllowed("%s: parameter match {name | pidfile} is required", action)
	}
	m := v.GetStructValue()
	if m == nil {
		return notAllowed("%s: parameter match must be an object {name | pidfile}", action)
	}
	keys := make([]string, 0, len(m.GetFields()))
	for k := range m.GetFields() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s, ok := stringParam(m.GetFields()[k])
		if !ok {
			return notAllowed("%s: match.%s must be a string", action, k)
		}
		switch k {
		case "name":
			if err := checkName("process name", s); err != nil {
				return notAllowed("%s match %v", action, err)
			}
		case "pidfile":
			if err := checkPathForm(s); err != nil {
				return notAllowed("%s match.pidfile %v", action, err)
			}
		default:
			return notAllowed("%s: match.%s is not a match field (name, pidfile)", action, k)
		}
	}
	if len(rule.Pidfiles) == 0 && len(rule.Names) == 0 {
		return notAllowed("%s: this host allows no processes to be stopped (agent.yaml actions.%s.pidfiles or names)", action, action)
	}
	for _, k := range keys {
		s, _ := stringParam(m.GetFields()[k])
		if k == "name" && !slices.Contains(rule.Names, s) {
			return notAllowed("%s match.name %q is not an allowed process name (agent.yaml actions.%s.names)", action, s, action)
		}
		if k == "pidfile" && !slices.Contains(rule.Pidfiles, s) {
			return notAllowed("%s match.pidfile %q is not an allowed pidfile (agent.yaml actions.%s.pidfiles)", action, s, action)
		}
	}
	return nil
}

// checkCleanup: the path must be an allowed directory or below it, both as
// written and with every symlink resolved.
func checkCleanup(fields map[string]*structpb.Value, allowed []string) error {
	p, ok := stringParam(fields["path"])
	if !ok || p == "" {
		return notAllowed("disk.cleanup: parameter path must be a path")
	}
	if err := checkPathForm(p); err != nil {
		return notAllowed("disk.cleanup path %v", err)
	}
	if len(allowed) == 0 {
		return notAllowed("disk.cleanup path %s: this host allows no paths (agent.yaml actions.disk.cleanup.paths)", p)
	}
	list := strings.Join(allowed, ", ")
	if !slices.ContainsFunc(allowed, func(a string) bool { return within(a, p) }) {
		return notAllowed("disk.cleanup path %s not under an allowed path (%s)", p, list)
	}
	resolved, err := filepath.EvalSymlinks(p)
	if err != nil {
		return notAllowed("disk.cleanup path %s cannot be resolved (%v), so it cannot be shown to be under an allowed path (%s)", p, err, list)
	}
	inside := slices.ContainsFunc(allowed, func(a string) bool {
		ra, err := filepath.EvalSymlinks(a)
		return err == nil && within(ra, resolved)
	})
	if !inside {
		return notAllowed("disk.cleanup path %s resolves to %s, not under an allowed path (%s)", p, resolved, list)
	}
	if v, ok := fields["pattern"]; ok {
		pat, ok := stringParam(v)
		switch {
		case !ok:
			return notAllowed("disk.cleanup: parameter pattern must be a string")
		case strings.ContainsRune(pat, filepath.Separator) || pat == "." || pat == "..":
			return notAllowed("disk.cleanup pattern %q must match file names in path, not a path", pat)
		case strings.HasPrefix(pat, "-"):
			return notAllowed("disk.cleanup pattern %q starts with '-'", pat)
		case strings.ContainsAny(pat, shellMeta):
			return notAllowed("disk.cleanup pattern %q contains a shell character (one of %s)", pat, shellMeta)
		}
		if _, err := filepath.Match(pat, ""); err != nil {
			return notAllowed("disk.cleanup pattern %q: %v", pat, err)
		}
	}
	if v, ok := fields["mode"]; ok {
		if m, _ := stringParam(v); m != "delete" && m != "quarantine" {
			return notAllowed("disk.cleanup mode must be delete or quarantine")
		}
	}
	return nil
}

// checkPathForm: absolute, in clean form (no "..", ".", "//" or trailing
// "/": the kernel and filepath.Clean disagree on ".." after a symlink), no
// leading '-', no shell characters.
func checkPathForm(p string) error {
	switch {
	case strings.HasPrefix(p, "-"):
		return fmt.Errorf("%q starts with '-'", p)
	case !filepath.IsAbs(p):
		return fmt.Errorf("%q must be absolute", p)
	case strings.ContainsAny(p, shellMeta):
		return fmt.Errorf("%q contains a shell character (one of %s)", p, shellMeta)
	case filepath.Clean(p) != p:
		return fmt.Errorf("%q must be in clean form (%s)", p, filepath.Clean(p))
	}
	return nil
}

// checkName: a unit or process name: no leading '-', no path, no shell
// characters, no spaces.
func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case strings.HasPrefix(s, "-"):
		return fmt.Errorf("%s %q starts with '-'", what, s)
	case strings.ContainsAny(s, "/ \t") || s == "." || s == "..":
		return fmt.Errorf("%s %q contains '/' or a space", what, s)
	case strings.ContainsAny(s, shellMeta) || controlChar(s) >= 0:
		return fmt.Errorf("%s %q contains a shell or control character", what, s)
	}
	return nil
}

// within reports whether p is dir or below it (both absolute and clean).
func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	if err != nil {
		return false
	}
	return rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// checkStrings refuses control characters (NUL, newline, ...) in every
// string and key inside v.
func checkStrings(path string, v *structpb.Value) error {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		if c := controlChar(k.StringValue); c >= 0 {
			return fmt.Errorf("parameter %s contains control character %#x (%q)", path, c, k.StringValue)
		}
	case *structpb.Value_StructValue:
		for key, fv := range k.StructValue.GetFields() {
			if c := controlChar(key); c >= 0 {
				return fmt.Errorf("parameter name %q in %s contains control character %#x", key, path, c)
			}
			if err := checkStrings(path+"."+key, fv); err != nil {
				return err
			}
		}
	case *structpb.Value_ListValue:
		for i, lv := range k.ListValue.GetValues() {
			if err := checkStrings(fmt.Sprintf("%s[%d]", path, i), lv); err != nil {
				return err
			}
		}
	}
	return nil
}

// controlChar returns the first C0 control character or DEL in s, or -1.
func controlChar(s string) rune {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return r
		}
	}
	return -1
}

func stringParam(v *structpb.Value) (string, bool) {
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", false
	}
	return s.StringValue, true
}

func stringList(v *structpb.Value) ([]string, bool) {
	l := v.GetListValue()
	if l == nil {
		return nil, false
	}
	out := make([]string, 0, len(l.GetValues()))
	for _, e := range l.GetValues() {
		s, ok := stringParam(e)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func normalizeSignal(s string) string {
	return strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "SIG")
}
