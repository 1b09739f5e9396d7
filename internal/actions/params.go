package actions

import (
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Params reads an action's parameters with their types, collecting every
// problem instead of stopping at the first, and knows which parameters were
// asked for, so that Err also reports the ones nobody asked for (a typo in
// a policy is an error, not a silently ignored field). Problems read like
//
//	param match.pidfile: want a string, got number
//
// Use one Params per validation: read every parameter, then call Err.
//
//	p := actions.NewParams(params)
//	path := p.Path("path")
//	pattern := p.OptString("pattern", "*")
//	if err := p.Err(); err != nil {
//		return err // wraps ErrInvalidParams
//	}
type Params struct {
	prefix   string
	m        map[string]any
	known    map[string]bool
	children []*Params
	problems *[]Problem
}

// Problem is one problem with one parameter.
type Problem struct {
	// Param is the parameter's name with its objects and list indexes:
	// "match.pidfile", "command[0]"; "" for the parameters as a whole.
	Param string
	// Text says what is wrong.
	Text string
}

func (p Problem) String() string {
	if p.Param == "" {
		return p.Text
	}
	return "param " + p.Param + ": " + p.Text
}

// NewParams reads m, an action's parameters (nil is no parameters).
func NewParams(m map[string]any) *Params {
	return &Params{m: m, known: map[string]bool{}, problems: new([]Problem)}
}

// Problem records a problem with a parameter: "param <name>: <text>".
func (p *Params) Problem(name, format string, args ...any) {
	*p.problems = append(*p.problems, Problem{Param: p.prefix + name, Text: fmt.Sprintf(format, args...)})
}

// Err returns nil when every parameter read was valid and no other
// parameter was given, or else an error wrapping ErrInvalidParams that lists
// every problem.
func (p *Params) Err() error {
	problems := append([]Problem(nil), *p.problems...)
	problems = p.unknown(problems)
	if len(problems) == 0 {
		return nil
	}
	return &paramsError{problems: problems}
}

func (p *Params) unknown(problems []Problem) []Problem {
	var extra []string
	for k := range p.m {
		if !p.known[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		known := make([]string, 0, len(p.known))
		for k := range p.known {
			known = append(known, k)
		}
		sort.Strings(known)
		for _, k := range extra {
			problems = append(problems, Problem{Param: p.prefix + displayName(k), Text: "unknown parameter (known: " + strings.Join(known, ", ") + ")"})
		}
	}
	for _, c := range p.children {
		problems = c.unknown(problems)
	}
	return problems
}

// Known lists the parameters read so far (or tested with Has), sorted.
func (p *Params) Known() []string {
	out := make([]string, 0, len(p.known))
	for k := range p.known {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Present reports whether p holds an object: false for the Params that
// Object returns when the parameter is missing or not an object (the
// problem is already recorded).
func (p *Params) Present() bool { return p != nil && p.m != nil }

// Has reports whether the parameter is present (and marks it as known).
func (p *Params) Has(name string) bool {
	p.known[name] = true
	_, ok := p.m[name]
	return ok
}

func (p *Params) get(name string, required bool) (any, bool) {
	p.known[name] = true
	v, ok := p.m[name]
	if !ok && required {
		p.Problem(name, "required")
	}
	return v, ok
}

// typeName names the type of a structpb.Struct.AsMap value.
func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

func (p *Params) str(name string, required bool, def string) string {
	v, ok := p.get(name, required)
	if !ok {
		return def
	}
	s, isStr := v.(string)
	switch {
	case !isStr:
		p.Problem(name, "want a string, got %s", typeName(v))
		return def
	case required && s == "":
		p.Problem(name, "required, and must not be empty")
	case strings.ContainsRune(s, 0):
		p.Problem(name, "must not contain a NUL byte")
	case controlChar(s) >= 0:
		p.Problem(name, "must not contain control characters (newline, escape, ...), got %s", Quote(s, 200))
	}
	return s
}

// ShellMeta are the characters a shell gives a meaning to. Nothing Tend
// runs goes through a shell, so they are only data; names and paths that
// hold them are refused anyway (a process name, a pidfile, a directory to
// clean and its pattern), as the agent's allow-list refuses them, so that
// a tool that one day hands one to a shell cannot be misled. Command
// lines (argv) may hold them: each argument is passed as it is.
const ShellMeta = ";&|$`<>'\"\\"

// NoShellMeta records a problem if s holds a shell metacharacter.
func (p *Params) NoShellMeta(name, s string) {
	if i := strings.IndexAny(s, ShellMeta); i >= 0 {
		p.Problem(name, "must not contain %q (no shell metacharacters: %s), got %s", s[i], ShellMeta, Quote(s, 200))
	}
}

// controlChar returns the first C0 control character or DEL in s, or -1.
// Nothing Tend runs needs one in a parameter, and each is a way to forge a
// log line, a second command line or terminal output.
func controlChar(s string) rune {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return r
		}
	}
	return -1
}

// String reads a required, non-empty string.
func (p *Params) String(name string) string { return p.str(name, true, "") }

// OptString reads an optional string; def when absent.
func (p *Params) OptString(name, def string) string { return p.str(name, false, def) }

// OptBool reads an optional bool; def when absent.
func (p *Params) OptBool(name string, def bool) bool {
	v, ok := p.get(name, false)
	if !ok {
		return def
	}
	b, isBool := v.(bool)
	if !isBool {
		p.Problem(name, "want a bool (true or false), got %s", typeName(v))
		return def
	}
	return b
}

func (p *Params) num(name string, required bool, def float64) float64 {
	v, ok := p.get(name, required)
	if !ok {
		return def
	}
	f, isNum := v.(float64)
	if !isNum || math.IsNaN(f) || math.IsInf(f, 0) {
		p.Problem(name, "want a number, got %s", typeName(v))
		return def
	}
	return f
}

// Number reads a required number.
func (p *Params) Number(name string) float64 { return p.num(name, true, 0) }

// OptNumber reads an optional number; def when absent.
func (p *Params) OptNumber(name string, def float64) float64 { return p.num(name, false, def) }

func (p *Params) duration(name string, required bool, def time.Duration) time.Duration {
	v, ok := p.get(name, required)
	if !ok {
		return def
	}
	s, isStr := v.(string)
	if !isStr {
		p.Problem(name, "want a duration string such as \"30s\" or \"10m\", got %s", typeName(v))
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.Problem(name, "want a duration such as \"30s\" or \"10m\", got %s", Quote(s, 64))
		return def
	}
	if d < 0 {
		p.Problem(name, "must not be negative, got %s", Quote(s, 64))
		return def
	}
	return d
}

// Duration reads a required non-negative Go duration string ("30s").
func (p *Params) Duration(name string) time.Duration { return p.duration(name, true, 0) }

// OptDuration reads an optional non-negative Go duration string; def when
// absent.
func (p *Params) OptDuration(name string, def time.Duration) time.Duration {
	return p.duration(name, false, def)
}

func (p *Params) path(name string, required bool) string {
	s := p.str(name, required, "")
	if s == "" {
		return s
	}
	if !filepath.IsAbs(s) || filepath.Clean(s) != s {
		p.Problem(name, "want a clean absolute path (no \"..\", \".\", \"//\" or trailing \"/\"), got %s", Quote(s, 256))
		return ""
	}
	return s
}

// Path reads a required absolute path, which must already be clean
// (filepath.Clean returns it unchanged), so that what an allow-list
// compares is what is used.
func (p *Params) Path(name string) string { return p.path(name, true) }

// OptPath reads an optional absolute, clean path; "" when absent.
func (p *Params) OptPath(name string) string { return p.path(name, false) }

func (p *Params) list(name string, required bool) []string {
	v, ok := p.get(name, required)
	if !ok {
		return nil
	}
	l, isList := v.([]any)
	if !isList {
		p.Problem(name, "want a list of strings, got %s", typeName(v))
		return nil
	}
	if required && len(l) == 0 {
		p.Problem(name, "required, and must not be empty")
		return nil
	}
	out := make([]string, 0, len(l))
	for i, e := range l {
		s, isStr := e.(string)
		if !isStr {
			p.Problem(fmt.Sprintf("%s[%d]", name, i), "want a string, got %s", typeName(e))
			return nil
		}
		if strings.ContainsRune(s, 0) {
			p.Problem(fmt.Sprintf("%s[%d]", name, i), "must not contain a NUL byte")
			return nil
		}
		if controlChar(s) >= 0 {
			p.Problem(fmt.Sprintf("%s[%d]", name, i), "must not contain control characters (newline, escape, ...), got %s", Quote(s, 200))
			return nil
		}
		out = append(out, s)
	}
	return out
}

// StringList reads a required, non-empty list of strings.
func (p *Params) StringList(name string) []string { return p.list(name, true) }

// OptStringList reads an optional list of strings; nil when absent.
func (p *Params) OptStringList(name string) []string { return p.list(name, false) }

// Argv reads a required command line to run without a shell: a non-empty
// list of strings whose first element is a clean absolute path.
func (p *Params) Argv(name string) []string {
	argv := p.list(name, true)
	if len(argv) == 0 {
		return nil
	}
	if !filepath.IsAbs(argv[0]) || filepath.Clean(argv[0]) != argv[0] {
		p.Problem(name+"[0]", "want the program's clean absolute path (commands never go through a shell or $PATH), got %s", Quote(argv[0], 256))
		return nil
	}
	return argv
}

func (p *Params) object(name string, required bool) *Params {
	child := &Params{prefix: p.prefix + name + ".", known: map[string]bool{}, problems: p.problems}
	v, ok := p.get(name, required)
	if !ok {
		return nil
	}
	m, isObj := v.(map[string]any)
	if !isObj {
		p.Problem(name, "want an object, got %s", typeName(v))
		return child
	}
	child.m = m
	p.children = append(p.children, child)
	return child
}

// Object reads a required object; its parameters are read from the
// returned Params, whose problems are reported by the parent's Err. It is
// never nil.
func (p *Params) Object(name string) *Params {
	if c := p.object(name, true); c != nil {
		return c
	}
	return &Params{prefix: p.prefix + name + ".", known: map[string]bool{}, problems: p.problems}
}

// OptObject reads an optional object: nil when absent.
func (p *Params) OptObject(name string) *Params { return p.object(name, false) }

// displayName is a parameter name as given, or quoted when it is not made
// of letters, digits, '_' and '-' only.
func displayName(k string) string {
	if k == "" || len(k) > 64 {
		return Quote(k, 64)
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return Quote(k, 64)
		}
	}
	return k
}
