package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const goodPolicy = `apiVersion: tend.dev/v1
kind: Policy
metadata:
  name: tcp-cp
spec:
  selector:
    matchLabels: {role: web}
  check:
    type: tcp
    interval: 1s
    timeout: 1s
    tcp: {address: "%s"}
`

func TestMalformedPoliciesAreRefusedWhole(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	dir := t.TempDir()
	cases := []struct {
		name, content string
		want          []string
	}{
		{"bad-yaml.yaml", "apiVersion: tend.dev/v1\nkind: Policy\nmetadata: {name: x\n", []string{"bad-yaml.yaml:"}},
		{"unknown-type.yaml", strings.Replace(goodPolicy, "type: tcp", "type: htp", 1), []string{"unknown-type.yaml:9", "spec.check.type", "htp"}},
		{"missing-field.yaml", strings.Replace(goodPolicy, "  name: tcp-cp\n", "", 1), []string{"missing-field.yaml:", "metadata.name"}},
		{"empty-selector.yaml", strings.Replace(goodPolicy, "matchLabels: {role: web}", "matchLabels: {}", 1), []string{"empty-selector.yaml:", "spec.selector"}},
		// One bad document among good ones: nothing from the file is applied.
		{"mixed.yaml", strings.Replace(goodPolicy, "tcp-cp", "good-one", 1) + "---\n" + strings.Replace(goodPolicy, "type: tcp", "type: nope", 1), []string{"mixed.yaml:", "spec.check.type"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			content := c.content
			if strings.Contains(content, "%s") {
				content = strings.ReplaceAll(content, "%s", cp.addr)
			}
			require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
			_, errOut, err := cp.tendctl(t, "apply", "-f", p)
			require.Error(t, err, "apply of %s must fail", c.name)
			for _, w := range c.want {
				require.Contains(t, errOut, w)
			}
		})
	}
	out := cp.mustTendctl(t, "get", "policies", "-o", "json")
	var ps []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &ps))
	require.Empty(t, ps, "no policy from a refused file may be applied")
}

func TestPolicyCheckReachesMatchingAgents(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	tok := cp.token(t, "--uses", "2")
	startAgent(t, cp, "web-1", t.TempDir(), tok, "--labels", "role=web,zone=a")
	startAgent(t, cp, "db-1", t.TempDir(), tok, "--labels", "role=db,zone=a")
	cp.waitAgentStatus(t, "web-1", "connected", 20*time.Second)
	cp.waitAgentStatus(t, "db-1", "connected", 20*time.Second)

	p := writeFile(t, t.TempDir(), "tcp.yaml", strings.ReplaceAll(goodPolicy, "%s", cp.addr))
	out := cp.mustTendctl(t, "apply", "-f", p)
	require.Contains(t, out, "tcp-cp")
	require.Contains(t, out, "created")

	type checkJSON struct {
		Agent  string `json:"agent"`
		Check  string `json:"check"`
		Status string `json:"status"`
	}
	var checks []checkJSON
	require.Eventually(t, func() bool {
		out, _, err := cp.tendctl(t, "get", "checks", "-o", "json")
		if err != nil || json.Unmarshal([]byte(out), &checks) != nil {
			return false
		}
		for _, c := range checks {
			if c.Agent == "web-1" && c.Check == "tcp-cp" && c.Status == "ok" {
				return true
			}
		}
		return false
	}, 20*time.Second, 250*time.Millisecond)
	for _, c := range checks {
		require.NotEqual(t, "db-1", c.Agent, "the selector role=web must not reach db-1")
	}

	// Re-applying the same file changes nothing.
	require.Contains(t, cp.mustTendctl(t, "apply", "-f", p), "unchanged")
	// Deleting the policy stops its check.
	cp.mustTendctl(t, "delete", "policy", "tcp-cp")
	out = cp.mustTendctl(t, "get", "policies", "-o", "json")
	require.Equal(t, "[]", strings.TrimSpace(out))
}
