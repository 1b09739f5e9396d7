package policy

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSubstitute(t *testing.T) {
	labels := map[string]string{"dir": "/srv/app", "addr": "127.0.0.1:9000"}
	for _, c := range []struct {
		in, want, err string
	}{
		{"plain", "plain", ""},
		{"{{ .labels.dir }}/x.pid", "/srv/app/x.pid", ""},
		{"{{.labels.addr}}", "127.0.0.1:9000", ""},
		{"http://{{ .labels.addr }}/healthz?d={{ .labels.dir }}", "http://127.0.0.1:9000/healthz?d=/srv/app", ""},
		{`{{ .labels.port | default "8080" }}`, "8080", ""},
		{`{{ .labels.dir | default "/x" }}`, "/srv/app", ""},
		{"{{ .labels.nope }}", "", "agent has no label nope"},
		{"{{ .Env.HOME }}", "", "malformed token"},
		{"{{ .labels.dir ", "", "malformed token"},
		{"{{ printf \"%s\" .labels.dir }}", "", "malformed token"},
	} {
		got, err := Substitute(c.in, labels)
		if c.err != "" {
			require.ErrorContains(t, err, c.err, c.in)
			continue
		}
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, got, c.in)
	}
}

const tokenPolicy = `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: demo-http}
spec:
  selector: {matchLabels: {app: demo}}
  check:
    type: http
    interval: 2s
    http: {url: "http://{{ .labels.demo_addr }}/healthz"}
`

func TestTokensInPolicies(t *testing.T) {
	ps, err := Parse("t.yaml", []byte(tokenPolicy))
	require.NoError(t, err)
	cs, err := ps[0].CheckSpecFor(3, map[string]string{"app": "demo", "demo_addr": "127.0.0.1:18080"})
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:18080/healthz", cs.GetHttp().GetUrl())
	require.Equal(t, uint64(3), cs.GetPolicyVersion())

	_, err = ps[0].CheckSpecFor(3, map[string]string{"app": "demo"})
	require.ErrorContains(t, err, "spec.check.http.url: agent has no label demo_addr")
	// A label value that makes the field invalid is refused after substitution.
	_, err = ps[0].CheckSpecFor(3, map[string]string{"demo_addr": "a b/%%"})
	require.ErrorContains(t, err, "spec.check.http.url")

	bad := `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: demo}}
  check:
    type: process
    process: {pidfile: "{{ .Env.X }}/p.pid"}
`
	_, err = Parse("bad.yaml", []byte(bad))
	require.ErrorContains(t, err, "bad.yaml:8: spec.check.process.pidfile: malformed token")

	rel := `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: rel}
spec:
  selector: {matchLabels: {app: demo}}
  check:
    type: disk
    disk: {path: "{{ .labels.dir }}", maxUsedPercent: 80}
`
	ps, err = Parse("rel.yaml", []byte(rel))
	require.NoError(t, err)
	_, err = ps[0].CheckSpecFor(1, map[string]string{"dir": "relative/path"})
	require.ErrorContains(t, err, "not an absolute path")
}

func TestBadWhenIsRefusedWithItsField(t *testing.T) {
	doc := tokenPolicy + "  trigger:\n    when: 'result.stauts == \"critical\"'\n"
	_, err := Parse("w.yaml", []byte(doc))
	require.ErrorContains(t, err, "w.yaml:11: spec.trigger.when")
}
