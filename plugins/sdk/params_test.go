package sdk

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParams(t *testing.T) {
	type out struct {
		Name    string
		Pattern string
		Older   time.Duration
		Rec     bool
		Count   float64
		Argv    []string
		Tags    []string
		Path    string
		Pidfile string
	}
	read := func(m map[string]any) (out, error) {
		p := NewParams(m)
		var o out
		o.Name = p.String("name")
		o.Pattern = p.OptString("pattern", "*")
		o.Older = p.OptDuration("olderThan", time.Minute)
		o.Rec = p.OptBool("recursive", false)
		o.Count = p.OptNumber("count", 1)
		o.Argv = p.Argv("argv")
		o.Tags = p.OptStringList("tags")
		o.Path = p.OptPath("path")
		if match := p.OptObject("match"); match != nil {
			o.Pidfile = match.OptPath("pidfile")
		}
		return o, p.Err()
	}
	base := func(kv ...any) map[string]any {
		m := map[string]any{"name": "x", "argv": []any{"/bin/true"}}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	del := func(m map[string]any, k string) map[string]any { delete(m, k); return m }

	tests := []struct {
		name string
		in   map[string]any
		want out
		errs []string // substrings of the error; none: valid
	}{
		{name: "defaults", in: base(),
			want: out{Name: "x", Pattern: "*", Older: time.Minute, Count: 1, Argv: []string{"/bin/true"}}},
		{name: "all set", in: base("pattern", "*.log", "olderThan", "1h", "recursive", true, "count", 3.0,
			"tags", []any{"a", "b"}, "path", "/var/log", "match", map[string]any{"pidfile": "/run/x.pid"}),
			want: out{Name: "x", Pattern: "*.log", Older: time.Hour, Rec: true, Count: 3, Argv: []string{"/bin/true"},
				Tags: []string{"a", "b"}, Path: "/var/log", Pidfile: "/run/x.pid"}},
		{name: "missing required", in: del(base(), "name"), errs: []string{"param name: required"}},
		{name: "empty required string", in: base("name", ""), errs: []string{"param name: required, and must not be empty"}},
		{name: "wrong type string", in: base("name", 3.0), errs: []string{"param name: want a string, got number"}},
		{name: "null", in: base("pattern", nil), errs: []string{"param pattern: want a string, got null"}},
		{name: "NUL in string", in: base("name", "a\x00b"), errs: []string{"param name: must not contain a NUL byte"}},
		{name: "wrong type bool", in: base("recursive", "yes"), errs: []string{"param recursive: want a bool (true or false), got string"}},
		{name: "wrong type number", in: base("count", "3"), errs: []string{"param count: want a number, got string"}},
		{name: "bad duration", in: base("olderThan", "3 days"), errs: []string{`param olderThan: want a duration such as "30s" or "10m", got "3 days"`}},
		{name: "duration as number", in: base("olderThan", 60.0), errs: []string{"param olderThan: want a duration string"}},
		{name: "negative duration", in: base("olderThan", "-1s"), errs: []string{`param olderThan: must not be negative, got "-1s"`}},
		{name: "relative path", in: base("path", "var/log"), errs: []string{`param path: want a clean absolute path`, `got "var/log"`}},
		{name: "unclean path", in: base("path", "/var/log/../../etc"), errs: []string{`param path: want a clean absolute path`}},
		{name: "trailing slash", in: base("path", "/var/log/"), errs: []string{`param path: want a clean absolute path`}},
		{name: "argv not a list", in: base("argv", "/bin/true"), errs: []string{"param argv: want a list of strings, got string"}},
		{name: "argv empty", in: base("argv", []any{}), errs: []string{"param argv: required, and must not be empty"}},
		{name: "argv relative", in: base("argv", []any{"true"}), errs: []string{`param argv[0]: want the program's clean absolute path`, `got "true"`}},
		{name: "argv element type", in: base("argv", []any{"/bin/echo", 1.0}), errs: []string{"param argv[1]: want a string, got number"}},
		{name: "object wrong type", in: base("match", "x"), errs: []string{"param match: want an object, got string"}},
		{name: "nested wrong type", in: base("match", map[string]any{"pidfile": true}), errs: []string{"param match.pidfile: want a string, got bool"}},
		{name: "unknown top level", in: base("patern", "*.log"), errs: []string{"param patern: unknown parameter (known: argv, count, match, name, olderThan, path, pattern, recursive, tags)"}},
		{name: "unknown nested", in: base("match", map[string]any{"pid": 3.0}), errs: []string{"param match.pid: unknown parameter (known: pidfile)"}},
		{name: "hostile unknown name", in: base("a\nb", 1.0), errs: []string{`param "a\nb": unknown parameter`}},
		{name: "every problem at once", in: base("name", 1.0, "recursive", 1.0, "zzz", 1.0),
			errs: []string{"param name: want a string", "param recursive: want a bool", "param zzz: unknown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := read(tt.in)
			if len(tt.errs) == 0 {
				require.NoError(t, err)
				require.Equal(t, tt.want, got)
				return
			}
			require.Error(t, err)
			require.True(t, errors.Is(err, ErrInvalidParams), "error must wrap ErrInvalidParams: %v", err)
			for _, s := range tt.errs {
				require.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestParamsRequiredObject(t *testing.T) {
	p := NewParams(map[string]any{})
	m := p.Object("match")
	require.NotNil(t, m)
	require.Equal(t, "", m.OptString("name", ""))
	err := p.Err()
	require.ErrorIs(t, err, ErrInvalidParams)
	require.Equal(t, "invalid params: param match: required", err.Error())
}

func TestInvalidParamsf(t *testing.T) {
	err := InvalidParamsf("param %s: set exactly one of name or pidfile", "match")
	require.ErrorIs(t, err, ErrInvalidParams)
	require.Equal(t, "invalid params: param match: set exactly one of name or pidfile", err.Error())
}
