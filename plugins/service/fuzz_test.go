package service

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"tend.dev/tend/internal/actions"
	"tend.dev/tend/plugins/sdk/sdktest"
)

// FuzzValidate: service.restart's parameter validation never panics,
// agrees with the schema the control plane and the agent use, and what it
// accepts is a unit name systemd allows, with a unit-type suffix, that
// does not start with '-' or '.'.
//
//	go test -run '^$' -fuzz FuzzValidate ./plugins/service/
func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"name": "nginx"}`, `{"name": "nginx.service"}`, `{"name": "getty@tty1.service"}`,
		`{"name": "nginx;reboot"}`, `{"name": "nginx\nreboot"}`, `{"name": "--no-block"}`,
		`{"name": "$(reboot)"}`, `{"name": "` + "`reboot`" + `"}`, `{"name": ".service"}`, `{"name": "a\u0000b"}`,
		`{"name": "` + strings.Repeat("a", 300) + `"}`, `{"name": 1}`, `{"unit": "nginx"}`, `{}`,
	} {
		f.Add(s)
	}
	p := New(nil)
	f.Fuzz(func(t *testing.T, in string) {
		var params map[string]any
		if json.Unmarshal([]byte(in), &params) != nil {
			return
		}
		if !sdktest.ValidateLikeSchema(t, p, ActionRestart, params) {
			return
		}
		unit, _ := parseRestart(ActionRestart, params)
		if again, err := unitName(unit); err != nil || again != unit {
			t.Fatalf("accepted unit %q does not validate again as itself: %q %v", unit, again, err)
		}
		if strings.HasPrefix(unit, "-") || strings.HasPrefix(unit, ".") || len(unit) > 255+len(".service") {
			t.Fatalf("accepted unit %q", unit)
		}
		if !slices.ContainsFunc(actions.UnitTypes, func(s string) bool { return strings.HasSuffix(unit, s) }) {
			t.Fatalf("accepted unit %q without a unit-type suffix", unit)
		}
		for _, r := range unit {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":-_.\\@", r)) {
				t.Fatalf("accepted unit %q with %q", unit, r)
			}
		}
	})
}
