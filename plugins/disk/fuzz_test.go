package disk

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/plugins/sdk/sdktest"
)

// FuzzValidate: disk.cleanup's parameter validation never panics, agrees
// with the schema the control plane and the agent use, and what it accepts
// names a directory by a clean absolute path other than "/", a valid glob
// on base names that does not start with '-', a known mode and no
// negative age, with no control characters.
//
//	go test -run '^$' -fuzz FuzzValidate ./plugins/disk/
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"path": "/var/log/app", "pattern": "*.log", "olderThan": "24h", "mode": "quarantine", "recursive": true, "quarantineTTL": "1h"}`,
		`{"path": "/var/log/app;rm -rf /"}`, `{"path": "/var/log/app/$(id)"}`, `{"path": "/var/log/` + "`id`" + `"}`,
		`{"path": "/var/log/app\n/etc"}`, `{"path": "/var/log/app\u0000/etc"}`, `{"path": "-rf"}`, `{"path": "/"}`,
		`{"path": "/var/log/../../etc"}`, `{"path": "/tmp", "pattern": "../*"}`, `{"path": "/tmp", "pattern": "-rf"}`,
		`{"path": "/tmp", "pattern": "[a-"}`, `{"path": "/tmp", "pattern": "*;id"}`, `{"path": "/tmp", "olderThan": "-1h"}`,
		`{"path": "/tmp", "olderThan": "9999999999h"}`, `{"path": "/tmp", "mode": "shred"}`, `{"path": 1}`, `{}`,
	} {
		f.Add(s)
	}
	p := New(nil)
	f.Fuzz(func(t *testing.T, in string) {
		var params map[string]any
		if json.Unmarshal([]byte(in), &params) != nil {
			return
		}
		if !sdktest.ValidateLikeSchema(t, p, ActionCleanup, params) {
			return
		}
		c, _ := parseCleanup(ActionCleanup, params)
		switch {
		case !filepath.IsAbs(c.Path) || filepath.Clean(c.Path) != c.Path || c.Path == "/":
			t.Fatalf("accepted path %q", c.Path)
		case c.Pattern == "" || strings.ContainsRune(c.Pattern, '/') || strings.HasPrefix(c.Pattern, "-"):
			t.Fatalf("accepted pattern %q", c.Pattern)
		case c.Mode != ModeDelete && c.Mode != ModeQuarantine:
			t.Fatalf("accepted mode %q", c.Mode)
		case c.OlderThan < 0 || c.QuarantineTTL < 0:
			t.Fatalf("accepted a negative age: %v %v", c.OlderThan, c.QuarantineTTL)
		}
		if _, err := filepath.Match(c.Pattern, ""); err != nil {
			t.Fatalf("accepted pattern %q: %v", c.Pattern, err)
		}
		if strings.ContainsAny(c.Path+c.Pattern, actions.ShellMeta) {
			t.Fatalf("accepted shell metacharacters in %q %q", c.Path, c.Pattern)
		}
		for _, s := range []string{c.Path, c.Pattern, c.Mode} {
			if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
				t.Fatalf("accepted a control character in %q", s)
			}
		}
	})
}
