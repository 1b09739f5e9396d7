package policy

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Token substitution (as Sensu's): string parameters of a check may refer to
// the labels of the agent that runs it, so that one fleet-wide policy can
// describe hosts that differ a little:
//
//	pidfile: "{{ .labels.app_dir }}/service.pid"
//	url: "http://{{ .labels.listen | default \"127.0.0.1:8080\" }}/healthz"
//
// Tokens are replaced by the control plane when it computes each agent's
// checks. Labels come from the agent itself, so a token can only change what
// that agent does to itself; the value is then validated as the field
// requires (an absolute path, a URL, host:port). An agent missing a label
// that has no default does not get the check, and the control plane logs why.

var (
	tokenRE    = regexp.MustCompile(`\{\{\s*\.labels\.([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*(?:\|\s*default\s+"([^"{}]*)"\s*)?\}\}`)
	anyTokenRE = regexp.MustCompile(`\{\{.*?\}\}`)
)

// hasTokens reports whether s contains a token.
func hasTokens(s string) bool { return strings.Contains(s, "{{") }

// checkTokens returns a message if s holds a malformed token.
func checkTokens(s string) string {
	rest := tokenRE.ReplaceAllString(s, "")
	if strings.Contains(rest, "{{") || strings.Contains(rest, "}}") {
		bad := anyTokenRE.FindString(rest)
		if bad == "" {
			bad = rest
		}
		return fmt.Sprintf(`malformed token %q: want {{ .labels.NAME }} or {{ .labels.NAME | default "value" }}`, bad)
	}
	return ""
}

// Substitute replaces every label token in s with the label's value (or the
// token's default).
func Substitute(s string, labels map[string]string) (string, error) {
	if !hasTokens(s) {
		return s, nil
	}
	if msg := checkTokens(s); msg != "" {
		return "", fmt.Errorf("%s", msg)
	}
	var missing []string
	out := tokenRE.ReplaceAllStringFunc(s, func(tok string) string {
		m := tokenRE.FindStringSubmatch(tok)
		if v, ok := labels[m[1]]; ok {
			return v
		}
		if strings.Contains(tok, "default") {
			return m[2]
		}
		missing = append(missing, m[1])
		return ""
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("agent has no label %s (and the token has no default)", strings.Join(missing, ", "))
	}
	return out, nil
}

// templated reports whether the field's value uses tokens; if it does, only
// the token syntax is checked now and the value is checked per agent.
func (d *docDecoder) templated(field, value string) bool {
	if !hasTokens(value) {
		return false
	}
	if msg := checkTokens(value); msg != "" {
		d.add(field, "%s", msg)
	}
	return true
}

// CheckSpecFor is CheckSpec with the agent's labels substituted into the
// check's string parameters, validated after substitution.
func (p *Policy) CheckSpecFor(version uint64, labels map[string]string) (*agentv1.CheckSpec, error) {
	cs := p.CheckSpec(version)
	sub := func(field string, s *string) error {
		v, err := Substitute(*s, labels)
		if err != nil {
			return fmt.Errorf("policy %s: spec.check.%s: %w", p.Name(), field, err)
		}
		*s = v
		return nil
	}
	var err error
	switch c := cs.Check.(type) {
	case *agentv1.CheckSpec_Process:
		if err = sub("process.name", &c.Process.Name); err == nil {
			err = sub("process.pidfile", &c.Process.Pidfile)
		}
		if err == nil && c.Process.Pidfile != "" && !path.IsAbs(c.Process.Pidfile) {
			err = fmt.Errorf("policy %s: spec.check.process.pidfile: %q is not an absolute path", p.Name(), c.Process.Pidfile)
		}
	case *agentv1.CheckSpec_Disk:
		if err = sub("disk.path", &c.Disk.Path); err == nil && !path.IsAbs(c.Disk.Path) {
			err = fmt.Errorf("policy %s: spec.check.disk.path: %q is not an absolute path", p.Name(), c.Disk.Path)
		}
	case *agentv1.CheckSpec_Tcp:
		if err = sub("tcp.address", &c.Tcp.Address); err == nil {
			if msg := checkHostPort(c.Tcp.Address); msg != "" {
				err = fmt.Errorf("policy %s: spec.check.tcp.address: %s", p.Name(), msg)
			}
		}
	case *agentv1.CheckSpec_Http:
		if err = sub("http.url", &c.Http.Url); err == nil {
			if msg := checkHTTPURL(c.Http.Url); msg != "" {
				err = fmt.Errorf("policy %s: spec.check.http.url: %s", p.Name(), msg)
			}
		}
	case *agentv1.CheckSpec_Command:
		for i := range c.Command.Argv {
			if err = sub("command.argv["+strconv.Itoa(i)+"]", &c.Command.Argv[i]); err != nil {
				break
			}
		}
		if err == nil && !path.IsAbs(c.Command.Argv[0]) {
			err = fmt.Errorf("policy %s: spec.check.command.argv[0]: %q is not an absolute path", p.Name(), c.Command.Argv[0])
		}
	case *agentv1.CheckSpec_Service:
		err = sub("service.name", &c.Service.Name)
	}
	if err != nil {
		return nil, err
	}
	return cs, nil
}

// templatedList is templated for every item of a list; true if any item
// uses tokens.
func (d *docDecoder) templatedList(field string, items []string) bool {
	any := false
	for i, it := range items {
		if d.templated(field+"["+strconv.Itoa(i)+"]", it) {
			any = true
		}
	}
	return any
}

// SubstituteParams replaces label tokens in every string of a remediation's
// params (a JSON value: maps, lists, strings, numbers, bools); errors name
// the path of the string that failed.
func SubstituteParams(v any, labels map[string]string) (any, error) {
	switch x := v.(type) {
	case string:
		return Substitute(x, labels)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			s, err := SubstituteParams(e, labels)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			out[i] = s
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			s, err := SubstituteParams(e, labels)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = s
		}
		return out, nil
	}
	return v, nil
}
