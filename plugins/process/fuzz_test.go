package process

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/plugins/sdk/sdktest"
)

// FuzzValidate: the parameter validation of process.restart and
// process.kill never panics, agrees with the schema the control plane and
// the agent use, and what it accepts matches exactly one of a bare name
// (no '/', not starting with '-') or a clean absolute pidfile, restarts
// with an argv that needs no shell, and sends a known signal; no control
// characters anywhere.
//
//	go test -run '^$' -fuzz FuzzValidate ./plugins/process/
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"match": {"pidfile": "/run/nginx.pid"}, "command": ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"], "grace": "3s", "confirm": "500ms"}`,
		`{"match": {"name": "nginx"}, "signal": "SIGHUP"}`,
		`{"match": {"name": "nginx;id"}, "command": ["/usr/sbin/nginx"]}`,
		`{"match": {"name": "$(id)"}, "signal": "KILL"}`,
		`{"match": {"name": "` + "`id`" + `"}, "signal": "KILL"}`,
		`{"match": {"name": "x\ny"}, "signal": "KILL"}`,
		`{"match": {"name": "-9"}, "signal": "KILL"}`,
		`{"match": {"name": "a\u0000b"}}`,
		`{"match": {"name": "../../bin/sh"}}`,
		`{"match": {"name": "x", "pidfile": "/run/x.pid"}, "command": ["/bin/true"]}`,
		`{"match": {"pidfile": "run/x.pid"}, "command": ["sh", "-c", "id"]}`,
		`{"match": {}, "command": "/bin/true"}`,
		`{"match": "nginx", "signal": 9}`,
		`{"match": {"cmdline": ".*"}, "env": {}}`,
		`{"match": {"name": "x"}, "command": ["/bin/true"], "grace": "1h", "confirm": "-1s"}`,
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	p := New(nil)
	ctrl := func(s string) bool {
		return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0
	}
	f.Fuzz(func(t *testing.T, in string, restart bool) {
		var params map[string]any
		if json.Unmarshal([]byte(in), &params) != nil {
			return
		}
		action := ActionKill
		if restart {
			action = ActionRestart
		}
		if !sdktest.ValidateLikeSchema(t, p, action, params) {
			return
		}
		parsed, _ := parse(action, params)
		var m matchParams
		switch x := parsed.(type) {
		case restartParams:
			m = x.Match
			if len(x.Command) == 0 || !filepath.IsAbs(x.Command[0]) || filepath.Clean(x.Command[0]) != x.Command[0] {
				t.Fatalf("accepted command %q", x.Command)
			}
			for _, a := range x.Command {
				if ctrl(a) {
					t.Fatalf("accepted a control character in %q", a)
				}
			}
			if x.Grace < 0 || x.Grace > maxGrace || x.Confirm < 0 || x.Confirm > actions.MaxConfirm {
				t.Fatalf("accepted grace %v confirm %v", x.Grace, x.Confirm)
			}
		case killParams:
			m = x.Match
			if sig, ok := signals[x.SignalName]; !ok || sig != x.Signal {
				t.Fatalf("accepted signal %q (%v)", x.SignalName, x.Signal)
			}
		default:
			t.Fatalf("parsed %T", parsed)
		}
		switch {
		case (m.Name == "") == (m.Pidfile == ""):
			t.Fatalf("accepted match %+v: not exactly one of name and pidfile", m)
		case m.Name != "" && (strings.ContainsRune(m.Name, '/') || strings.HasPrefix(m.Name, "-") || ctrl(m.Name) || len(m.Name) > actions.MaxProcessName):
			t.Fatalf("accepted name %q", m.Name)
		case m.Pidfile != "" && (!filepath.IsAbs(m.Pidfile) || filepath.Clean(m.Pidfile) != m.Pidfile || ctrl(m.Pidfile)):
			t.Fatalf("accepted pidfile %q", m.Pidfile)
		case strings.ContainsAny(m.Name+m.Pidfile, actions.ShellMeta) || strings.ContainsAny(m.Name, " \t"):
			t.Fatalf("accepted match %+v with shell metacharacters or spaces", m)
		}
	})
}
