package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// withRemediation is base with its remediation replaced (line 16 on).
func withRemediation(rem string) string {
	i := strings.Index(base, "  remediation:\n")
	return base[:i] + rem
}

// The built-in actions' params are checked against their schemas when the
// policy is applied, with the field and line of every problem; templated
// values are checked per agent.
func TestBuiltinActionParams(t *testing.T) {
	tests := []struct {
		name string
		rem  string
		errs []string // nil: valid
	}{
		{"process.restart", `  remediation:
    action: process.restart
    params:
      match: {pidfile: /run/nginx.pid}
      command: [/usr/sbin/nginx, -c, /etc/nginx/nginx.conf]
      grace: 5s
`, nil},
		{"process.restart missing everything", `  remediation:
    action: process.restart
`, []string{
			`p.yaml:16: spec.remediation.params.match: required`,
			`p.yaml:16: spec.remediation.params.command: required`,
		}},
		{"process.restart wrong types", `  remediation:
    action: process.restart
    params:
      match: {name: nginx, pidfile: /run/nginx.pid}
      command: "/usr/sbin/nginx -c /etc/nginx/nginx.conf"
      grace: 10
      env: {LD_PRELOAD: /tmp/x.so}
`, []string{
			`p.yaml:19: spec.remediation.params.match: set exactly one of name or pidfile, not both`,
			`p.yaml:20: spec.remediation.params.command: want a list of strings, got string`,
			`p.yaml:21: spec.remediation.params.grace: want a duration string such as "30s" or "10m", got number`,
			`p.yaml:22: spec.remediation.params.env: unknown parameter (known: command, confirm, grace, match)`,
		}},
		{"exec.run relative program", `  remediation:
    action: exec.run
    params: {argv: [rotate-logs, --now]}
`, []string{`p.yaml:18: spec.remediation.params.argv[0]: want the program's clean absolute path (commands never go through a shell or $PATH), got "rotate-logs"`}},
		{"exec.run newline in an argument", `  remediation:
    action: exec.run
    params: {argv: [/usr/local/bin/rotate-logs, "--now\nid"]}
`, []string{`p.yaml:18: spec.remediation.params.argv[1]: must not contain control characters (newline, escape, ...), got "--now\nid"`}},
		{"exec.run shell metacharacters are literal", `  remediation:
    action: exec.run
    params: {argv: [/usr/bin/printf, "%s", "$(id); ` + "`id`" + `"]}
`, nil},
		{"disk.cleanup", `  remediation:
    action: disk.cleanup
    params: {path: /var/log/app, pattern: "*.log", olderThan: 24h, mode: quarantine, recursive: true}
`, nil},
		{"disk.cleanup bad", `  remediation:
    action: disk.cleanup
    params:
      path: /var/log/app/../../etc
      pattern: "-rf"
      mode: shred
`, []string{
			`p.yaml:19: spec.remediation.params.path: want a clean absolute path (no "..", ".", "//" or trailing "/"), got "/var/log/app/../../etc"`,
			`p.yaml:20: spec.remediation.params.pattern: must not start with '-', got "-rf"`,
			`p.yaml:21: spec.remediation.params.mode: want "delete" or "quarantine", got "shred"`,
		}},
		{"service.restart", `  remediation:
    action: service.restart
    params: {name: nginx}
`, nil},
		{"service.restart injection", `  remediation:
    action: service.restart
    params: {name: "nginx;reboot"}
`, []string{`p.yaml:18: spec.remediation.params.name: unit name "nginx;reboot" has ';', which systemd does not allow in unit names`}},
		{"process.kill", `  remediation:
    action: process.kill
    params: {match: {name: stuck-worker}, signal: SIGKILL}
`, nil},
		{"process.kill bad signal and name", `  remediation:
    action: process.kill
    params: {match: {name: "-9"}, signal: NINE}
`, []string{
			`p.yaml:18: spec.remediation.params.match.name: must not start with '-', got "-9"`,
			`p.yaml:18: spec.remediation.params.signal: want one of ABRT, CONT, HUP, INT, KILL, QUIT, STOP, TERM, USR1, USR2, WINCH, got "NINE"`,
		}},
		{"templated values are checked per agent", `  remediation:
    action: process.restart
    params:
      match: {pidfile: "{{ .labels.dir }}/app.pid"}
      command: ["{{ .labels.bin }}", --listen, "{{ .labels.addr | default \"127.0.0.1:80\" }}"]
`, nil},
		{"templated: syntax and other params still checked", `  remediation:
    action: process.restart
    params:
      match: {pidfile: "{{ labels.dir }}/app.pid"}
      command: ["{{ .labels.bin }}"]
      grace: forever
`, []string{
			`p.yaml:19: spec.remediation.params.match.pidfile: malformed token "{{ labels.dir }}": want {{ .labels.NAME }} or {{ .labels.NAME | default "value" }}`,
			`p.yaml:21: spec.remediation.params.grace: want a duration such as "30s" or "10m", got "forever"`,
		}},
		{"third-party action: free-form", `  remediation:
    action: custom.thing
    params: {anything: [1, {goes: true}]}
`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Parse("p.yaml", []byte(withRemediation(tc.rem)))
			if tc.errs == nil {
				require.NoError(t, err)
				require.Len(t, ps, 1)
				return
			}
			require.Error(t, err)
			for _, e := range tc.errs {
				require.Contains(t, err.Error(), e)
			}
			require.Len(t, strings.Split(err.Error(), "\n"), len(tc.errs), "%v", err)
		})
	}
}

// Every example policy passes the schemas (they are what users copy).
func TestExamplesPassTheSchemas(t *testing.T) {
	files, err := filepath.Glob(examplePath("*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		_, err = Parse(filepath.Base(f), b)
		require.NoError(t, err, f)
	}
}

// After substitution, the params an agent would get are checked again.
func TestValidateParamsFor(t *testing.T) {
	require.NoError(t, ValidateParamsFor("exec.run", map[string]any{"argv": []any{"/bin/true"}}))
	err := ValidateParamsFor("exec.run", map[string]any{"argv": []any{"relative/bin"}})
	require.ErrorContains(t, err, `exec.run invalid params: param argv[0]: want the program's clean absolute path`)
	err = ValidateParamsFor("disk.cleanup", map[string]any{"path": "/srv/{{ .labels.x }}/../etc"})
	require.ErrorContains(t, err, "param path")
	require.NoError(t, ValidateParamsFor("custom.x", map[string]any{"whatever": 1.0}))
}

func TestJoinParam(t *testing.T) {
	require.Equal(t, "a", joinParam("a", ""))
	require.Equal(t, "b", joinParam("", "b"))
	require.Equal(t, "a.b", joinParam("a", "b"))
	require.Equal(t, "a[0]", joinParam("a", "[0]"))
	require.Equal(t, "a.b[0]", joinParam("a", "b[0]"))
}
