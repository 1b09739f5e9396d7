package policy

import (
	"fmt"
	"sort"
	"strings"

	"tend.dev/tend/internal/actions"
)

// Remediation params are checked against the action's schema when the
// policy is applied (internal/actions: the same code the agent and the
// plugin run), so that a policy whose task every agent would refuse is
// refused at once, with the field and line, and nothing is signed for it.
// A third-party plugin's action is checked by its plugin on the agent only.

const paramsBase = "spec.remediation.params"

// validateParams records every problem of a built-in action's params.
// Strings with label tokens are checked for their token syntax now and for
// their value per agent, after substitution (ValidateParamsFor): problems
// of those parameters are left until then.
func (d *docDecoder) validateParams(r *Remediation) {
	if !actions.IsBuiltin(r.Action) {
		return
	}
	templated := map[string]bool{}
	walkStrings(r.Params, "", func(path, s string) {
		if hasTokens(s) {
			templated[path] = true
			if msg := checkTokens(s); msg != "" {
				d.add(joinParam(paramsBase, path), "%s", msg)
			}
		}
	})
	err := actions.Validate(r.Action, r.Params)
	if err == nil {
		return
	}
	problems := actions.Problems(err)
	if problems == nil {
		d.add(paramsBase, "%v", err)
		return
	}
	for _, p := range problems {
		if templated[p.Param] {
			continue
		}
		d.add(joinParam(paramsBase, p.Param), "%s", p.Text)
	}
}

// ValidateParamsFor checks params of action after label substitution
// (what an agent would get) against the action's schema; nil for an
// action that is not built in. The remediation loop calls it before it
// signs a task.
func ValidateParamsFor(action string, params map[string]any) error {
	if !actions.IsBuiltin(action) {
		return nil
	}
	if err := actions.Validate(action, params); err != nil {
		return fmt.Errorf("%s %w", action, err)
	}
	return nil
}

// ParamsFor is the remediation's params for one agent: its labels
// substituted, then checked against the action's schema (label values come
// from agents and are hostile). Every task and standing order is built
// from it.
func (r *Remediation) ParamsFor(labels map[string]string) (map[string]any, error) {
	raw := map[string]any{}
	if r.Params != nil {
		raw = r.Params
	}
	sub, err := SubstituteParams(raw, labels)
	if err != nil {
		return nil, err
	}
	values := sub.(map[string]any)
	if err := ValidateParamsFor(r.Action, values); err != nil {
		return nil, err
	}
	return values, nil
}

// walkStrings calls f with the path ("match.pidfile", "command[0]") and
// value of every string in v, in a stable order.
func walkStrings(v any, path string, f func(path, s string)) {
	switch x := v.(type) {
	case string:
		f(path, x)
	case []any:
		for i, e := range x {
			walkStrings(e, fmt.Sprintf("%s[%d]", path, i), f)
		}
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			walkStrings(x[k], joinParam(path, k), f)
		}
	}
}

// joinParam joins a parameter path to a base: "a" + "b" is "a.b", "a" +
// "b[0]" is "a.b[0]", "a" + "" is "a".
func joinParam(base, p string) string {
	switch {
	case p == "":
		return base
	case base == "":
		return p
	case strings.HasPrefix(p, "["):
		return base + p
	}
	return base + "." + p
}
