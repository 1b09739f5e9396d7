package exec

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"tend.dev/tend/plugins/sdk/sdktest"
)

// FuzzValidate: exec.run's parameter validation never panics, refuses
// with ErrInvalidParams only, agrees with the schema the control plane and
// the agent use, and what it accepts is an argv that runs without a shell:
// a clean absolute program path and no control characters anywhere.
//
//	go test -run '^$' -fuzz FuzzValidate ./plugins/exec/
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"argv": ["/usr/local/bin/rotate-logs", "--now"]}`,
		`{"argv": ["/usr/local/bin/rotate-logs", "--now;id"]}`,
		`{"argv": ["/usr/local/bin/rotate-logs", "--now\nid"]}`,
		`{"argv": ["/bin/echo", "$(touch /tmp/canary)", "` + "`id`" + `", "-rf", "\u0000"]}`,
		`{"argv": ["sh", "-c", "id"]}`,
		`{"argv": ["/bin/../bin/sh"]}`,
		`{"argv": "/bin/true"}`,
		`{"argv": []}`,
		`{"argv": [1, null, true, {}]}`,
		`{"argv": ["/bin/true"], "env": {"LD_PRELOAD": "/tmp/x.so"}}`,
		`{}`,
		`null`,
	} {
		f.Add(s)
	}
	p := New(nil)
	f.Fuzz(func(t *testing.T, in string) {
		var params map[string]any
		if json.Unmarshal([]byte(in), &params) != nil {
			return
		}
		if !sdktest.ValidateLikeSchema(t, p, ActionRun, params) {
			return
		}
		r, _ := parseRun(ActionRun, params)
		if len(r.Argv) == 0 || !filepath.IsAbs(r.Argv[0]) || filepath.Clean(r.Argv[0]) != r.Argv[0] {
			t.Fatalf("accepted argv %q", r.Argv)
		}
		for _, a := range r.Argv {
			if strings.IndexFunc(a, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
				t.Fatalf("accepted a control character in %q", a)
			}
		}
	})
}
