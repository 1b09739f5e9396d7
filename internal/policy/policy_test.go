package policy

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// base is a valid policy; cases edit one line of it, so line numbers stay
// put. Its action is a third-party plugin's, whose params are free-form
// (TestBuiltinActionParams checks the built-in actions' schemas).
const base = `apiVersion: tend.dev/v1
kind: Policy
metadata:
  name: web
spec:
  selector:
    matchLabels: {role: web}
  check:
    type: http
    interval: 5s
    timeout: 2s
    http: {url: "http://127.0.0.1:8080/healthz"}
  trigger:
    failures: 3
    window: 5
  remediation:
    action: custom.restart
    timeout: 30s
`

// edit returns base with each old string replaced by the new one after it.
func edit(oldNew ...string) string {
	s := base
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(s, oldNew[i]) {
			panic("base does not contain " + oldNew[i])
		}
		s = strings.Replace(s, oldNew[i], oldNew[i+1], 1)
	}
	return s
}

func examplePath(name string) string {
	return filepath.Join("..", "..", "deploy", "examples", name)
}

func TestDesignExample(t *testing.T) {
	b, err := os.ReadFile(examplePath("web-nginx-down.yaml"))
	require.NoError(t, err)
	ps, err := Parse("web-nginx-down.yaml", b)
	require.NoError(t, err)
	require.Len(t, ps, 1)
	p := ps[0]
	require.Equal(t, "web-nginx-down", p.Name())
	s := p.Spec
	require.Equal(t, map[string]string{"role": "web"}, s.Selector.MatchLabels)
	require.Equal(t, ModeEnforce, s.Mode)
	require.False(t, s.Autonomous)
	require.Equal(t, Check{
		Type: "http", Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second),
		HTTP: &HTTPCheck{URL: "http://127.0.0.1:8080/healthz", ExpectStatus: 200},
	}, s.Check)
	require.Equal(t, Trigger{Failures: 3, Window: 5}, s.Trigger)
	require.Equal(t, &Remediation{
		Action: "process.restart",
		Params: map[string]any{
			"match":   map[string]any{"pidfile": "/run/nginx.pid"},
			"command": []any{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"},
		},
		Timeout:         Duration(30 * time.Second),
		RequireApproval: false,
		Verify:          Verify{Within: Duration(30 * time.Second)},
		MaxAttempts:     3,
		Backoff:         Duration(30 * time.Second),
		Cooldown:        Duration(10 * time.Minute),
	}, s.Remediation)
	require.Equal(t, &Limits{MaxConcurrent: "10%", MaxPerHour: 20,
		Breaker:     &Breaker{Failures: DefaultBreakerFailures, Window: Duration(DefaultBreakerWindow)},
		Correlation: &Correlation{Percent: DefaultCorrelationPercent, Window: Duration(DefaultCorrelationWindow), MinAgents: DefaultCorrelationMinAgents},
	}, s.Limits)
	require.Equal(t, &Escalate{Webhook: "http://127.0.0.1:9999/hook"}, s.Escalate)
}

func TestExampleFilesParse(t *testing.T) {
	files, err := filepath.Glob(examplePath("*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			ps, err := Parse(filepath.Base(f), b)
			require.NoError(t, err)
			require.NotEmpty(t, ps)
		})
	}
}

func TestParseDefaults(t *testing.T) {
	const minimal = `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: minimal}
spec:
  selector: {matchLabels: {role: db}}
  check:
    type: tcp
    tcp: {address: "127.0.0.1:5432"}
  remediation:
    action: custom.restart
    params: {}
  limits: {}
  escalate: {}
`
	ps, err := Parse("m.yaml", []byte(minimal))
	require.NoError(t, err)
	require.Len(t, ps, 1)
	s := ps[0].Spec
	require.Equal(t, ModeEnforce, s.Mode)
	require.Equal(t, Duration(10*time.Second), s.Check.Interval)
	require.Equal(t, Duration(10*time.Second), s.Check.Timeout)
	require.Equal(t, Trigger{Failures: 3, Window: 5}, s.Trigger)
	require.Equal(t, &Remediation{
		Action:      "custom.restart",
		Timeout:     Duration(DefaultActionTimeout),
		Verify:      Verify{Within: Duration(DefaultVerifyWithin)},
		MaxAttempts: DefaultMaxAttempts,
		Backoff:     Duration(DefaultBackoff),
		Cooldown:    Duration(DefaultCooldown),
	}, s.Remediation)
	require.Equal(t, &Limits{
		Breaker:     &Breaker{Failures: DefaultBreakerFailures, Window: Duration(DefaultBreakerWindow)},
		Correlation: &Correlation{Percent: DefaultCorrelationPercent, Window: Duration(DefaultCorrelationWindow), MinAgents: DefaultCorrelationMinAgents},
	}, s.Limits, "breaker and correlated-failure suppression are on by default")
	require.Zero(t, s.Remediation.ApprovalTimeout, "no approval timeout without requireApproval")
	require.Nil(t, s.Escalate)

	cases := []struct {
		name             string
		yaml             string
		failures, window int
		timeout          time.Duration
	}{
		{"short interval caps timeout", edit("    timeout: 2s\n", ""), 3, 5, 5 * time.Second},
		{"failures only widens window", edit("    window: 5\n", "", "failures: 3", "failures: 8"), 8, 8, 2 * time.Second},
		{"window only narrows failures", edit("    failures: 3\n", "", "window: 5", "window: 2"), 2, 2, 2 * time.Second},
		{"explicit", base, 3, 5, 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Parse("d.yaml", []byte(tc.yaml))
			require.NoError(t, err)
			require.Equal(t, tc.failures, ps[0].Spec.Trigger.Failures)
			require.Equal(t, tc.window, ps[0].Spec.Trigger.Window)
			require.Equal(t, tc.timeout, ps[0].Spec.Check.Timeout.D())
			require.Equal(t, 200, ps[0].Spec.Check.HTTP.ExpectStatus)
		})
	}
}

func TestParseSafetyLimits(t *testing.T) {
	ps, err := Parse("p.yaml", []byte(edit("    timeout: 30s\n", `    timeout: 30s
    requireApproval: true
  limits:
    breaker: {failures: 0}
    correlation: {percent: 30, window: 1m}
`)))
	require.NoError(t, err)
	s := ps[0].Spec
	require.Equal(t, &Breaker{Failures: 0, Window: Duration(DefaultBreakerWindow)}, s.Limits.Breaker, "failures: 0 turns the breaker off")
	require.Equal(t, &Correlation{Percent: 30, Window: Duration(time.Minute), MinAgents: DefaultCorrelationMinAgents}, s.Limits.Correlation)
	require.Equal(t, Duration(DefaultApprovalTimeout), s.Remediation.ApprovalTimeout, "approval timeout defaults with requireApproval")
}

func TestParseAutonomous(t *testing.T) {
	ps, err := Parse("p.yaml", []byte(edit("  check:\n", "  autonomous: true\n  offline: {maxPerHour: 2}\n  check:\n")))
	require.NoError(t, err)
	require.Equal(t, &Offline{After: Duration(DefaultOfflineAfter), MaxPerHour: 2, ValidFor: Duration(DefaultOfflineValidFor)}, ps[0].Spec.Offline)
	ps, err = Parse("p.yaml", []byte(base))
	require.NoError(t, err)
	require.Nil(t, ps[0].Spec.Offline, "no offline budget without autonomous")
}

func TestParseErrors(t *testing.T) {
	allTypes := "(want one of process, disk, tcp, http, command, service)"
	cases := []struct {
		name string
		yaml string
		want []string // each must appear as a whole line of the error
	}{
		{"unknown check type", edit("type: http", "type: htp"),
			[]string{`p.yaml:9: spec.check.type: unknown check type "htp" ` + allTypes}},
		{"unknown field with suggestion", edit("  check:\n", "  chekc:\n"),
			[]string{`p.yaml:8: spec.chekc: unknown field (did you mean "check"?)`,
				`p.yaml:5: spec.check: required field missing: the health check agents run (type: one of process, disk, tcp, http, command, service)`}},
		{"unknown field without suggestion", edit("    failures: 3\n", "    zzzzzzz: 3\n"),
			[]string{`p.yaml:14: spec.trigger.zzzzzzz: unknown field (want one of failures, window, when)`}},
		{"duplicate field", edit("    window: 5\n", "    window: 5\n    window: 6\n"),
			[]string{`p.yaml:16: spec.trigger.window: duplicate field (first set at line 15)`}},
		{"wrong apiVersion", edit("tend.dev/v1", "v1"),
			[]string{`p.yaml:1: apiVersion: unsupported apiVersion "v1" (want "tend.dev/v1")`}},
		{"missing apiVersion", edit("apiVersion: tend.dev/v1\n", "\n"),
			[]string{`p.yaml:2: apiVersion: required field missing (want "tend.dev/v1")`}},
		{"wrong kind", edit("kind: Policy", "kind: policy"),
			[]string{`p.yaml:2: kind: unsupported kind "policy" (want "Policy")`}},
		{"missing name", edit("  name: web\n", "  nme: web\n"),
			[]string{`p.yaml:4: metadata.nme: unknown field (did you mean "name"?)`,
				`p.yaml:3: metadata.name: required field missing: a lowercase name such as web-nginx-down`}},
		{"bad name", edit("name: web", "name: Web_1"),
			[]string{`p.yaml:4: metadata.name: invalid name "Web_1": use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit`}},
		{"name too long", edit("name: web", "name: "+strings.Repeat("a", 64)),
			[]string{`p.yaml:4: metadata.name: invalid name "` + strings.Repeat("a", 64) + `"`}},
		{"empty matchLabels", edit("matchLabels: {role: web}", "matchLabels: {}"),
			[]string{`p.yaml:7: spec.selector.matchLabels: required: an empty selector is an error, not "all" (set matchLabels, e.g. {role: web})`}},
		{"missing selector", edit("  selector:\n    matchLabels: {role: web}\n", "\n\n"),
			[]string{`p.yaml:5: spec.selector: required: an empty selector is an error, not "all"`}},
		{"bad mode", edit("  check:\n", "  mode: yolo\n  check:\n"),
			[]string{`p.yaml:8: spec.mode: unknown mode "yolo" (want enforce or shadow)`}},
		{"missing check type", edit("    type: http\n", "\n"),
			[]string{`p.yaml:8: spec.check.type: required field missing ` + allTypes + `; spec.check.http is set, so probably type: http`}},
		{"sub-object missing", edit("type: http", "type: tcp"),
			[]string{`p.yaml:12: spec.check.http: not allowed with type "tcp": set only spec.check.tcp`,
				`p.yaml:8: spec.check.tcp: required for check type "tcp", e.g. tcp: {address: "127.0.0.1:5432"}`}},
		{"process both", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    process: {name: nginx, pidfile: /run/nginx.pid}`, "type: http", "type: process"),
			[]string{`p.yaml:12: spec.check.process: set exactly one of name and pidfile, not both`}},
		{"process neither", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    process: {}`, "type: http", "type: process"),
			[]string{`p.yaml:12: spec.check.process: set one of name or pidfile`}},
		{"process relative pidfile", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    process: {pidfile: run/x.pid}`, "type: http", "type: process"),
			[]string{`p.yaml:12: spec.check.process.pidfile: must be an absolute path, got "run/x.pid"`}},
		{"disk relative path and bad percent", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    disk: {path: var, maxUsedPercent: 101}`, "type: http", "type: disk"),
			[]string{`p.yaml:12: spec.check.disk.path: must be an absolute path, got "var"`,
				`p.yaml:12: spec.check.disk.maxUsedPercent: must be greater than 0 and at most 100, got 101`}},
		{"disk zero percent", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    disk: {path: /, maxUsedPercent: 0}`, "type: http", "type: disk"),
			[]string{`p.yaml:12: spec.check.disk.maxUsedPercent: must be greater than 0 and at most 100, got 0`}},
		{"disk missing percent", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    disk: {path: /}`, "type: http", "type: disk"),
			[]string{`p.yaml:12: spec.check.disk.maxUsedPercent: required field missing`}},
		{"tcp no port", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    tcp: {address: localhost}`, "type: http", "type: tcp"),
			[]string{`p.yaml:12: spec.check.tcp.address: want host:port (e.g. 127.0.0.1:5432 or [::1]:5432), got "localhost"`}},
		{"tcp bad port", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    tcp: {address: "db:99999"}`, "type: http", "type: tcp"),
			[]string{`p.yaml:12: spec.check.tcp.address: port must be a number from 1 to 65535, got "99999"`}},
		{"tcp empty host", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    tcp: {address: ":80"}`, "type: http", "type: tcp"),
			[]string{`p.yaml:12: spec.check.tcp.address: host is empty in ":80"`}},
		{"http relative url", edit(`http://127.0.0.1:8080/healthz`, `/healthz`),
			[]string{`p.yaml:12: spec.check.http.url: want an absolute http:// or https:// URL, got "/healthz"`}},
		{"http ftp url", edit(`http://127.0.0.1:8080/healthz`, `ftp://x/`),
			[]string{`p.yaml:12: spec.check.http.url: want an absolute http:// or https:// URL, got "ftp://x/"`}},
		{"http bad status", edit(`healthz"}`, `healthz", expectStatus: 99}`),
			[]string{`p.yaml:12: spec.check.http.expectStatus: must be an HTTP status from 100 to 599, got 99`}},
		{"http status 600", edit(`healthz"}`, `healthz", expectStatus: 600}`),
			[]string{`p.yaml:12: spec.check.http.expectStatus: must be an HTTP status from 100 to 599, got 600`}},
		{"command empty argv", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    command: {argv: []}`, "type: http", "type: command"),
			[]string{`p.yaml:12: spec.check.command.argv: required field missing: a non-empty list`}},
		{"command relative argv0", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, "    command:\n      argv:\n      - check_load\n      - -w", "type: http", "type: command"),
			[]string{`p.yaml:14: spec.check.command.argv[0]: must be an absolute path (commands never run through a shell or $PATH), got "check_load"`}},
		{"service no name", edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, `    service: {name: ""}`, "type: http", "type: service"),
			[]string{`p.yaml:12: spec.check.service.name: required field missing`}},
		{"interval too short", edit("interval: 5s", "interval: 500ms"),
			[]string{`p.yaml:10: spec.check.interval: must be at least 1s, got 500ms`}},
		{"interval not a duration", edit("interval: 5s", "interval: 5"),
			[]string{`p.yaml:10: spec.check.interval: invalid duration "5": want a Go duration such as "5s", "1m30s" or "10m"`}},
		{"timeout longer than interval", edit("timeout: 2s", "timeout: 6s"),
			[]string{`p.yaml:11: spec.check.timeout: must not be longer than the interval (5s), got 6s`}},
		{"timeout zero", edit("timeout: 2s", "timeout: 0s"),
			[]string{`p.yaml:11: spec.check.timeout: must be greater than 0, got 0s`}},
		{"timeout longer than default interval", edit("    interval: 5s\n", "", "timeout: 2s", "timeout: 11s"),
			[]string{`p.yaml:10: spec.check.timeout: must not be longer than the interval (10s), got 11s`}},
		{"failures zero", edit("failures: 3", "failures: 0"),
			[]string{`p.yaml:14: spec.trigger.failures: must be at least 1, got 0`}},
		{"window below failures", edit("window: 5", "window: 2"),
			[]string{`p.yaml:15: spec.trigger.window: must be at least failures (3), got 2`}},
		{"window too big", edit("window: 5", "window: 101"),
			[]string{`p.yaml:15: spec.trigger.window: must be from 1 to 100, got 101`}},
		{"failures not an int", edit("failures: 3", "failures: three"),
			[]string{`p.yaml:14: spec.trigger.failures: want an integer, got "three"`}},
		{"action form", edit("action: custom.restart", "action: restart"),
			[]string{`p.yaml:17: spec.remediation.action: invalid action "restart": want <plugin>.<action> in lowercase, e.g. process.restart`}},
		{"action unknown for shipped plugin", edit("action: custom.restart", "action: process.restrat"),
			[]string{`p.yaml:17: spec.remediation.action: unknown action "process.restrat": plugin process has process.restart, process.kill`}},
		{"action missing", edit("    action: custom.restart\n", "\n"),
			[]string{`p.yaml:16: spec.remediation.action: required field missing: <plugin>.<action>, e.g. process.restart`}},
		{"remediation durations", edit("    timeout: 30s\n", "    timeout: 0s\n    verify: {within: -1s}\n    backoff: -1s\n    cooldown: soon\n    maxAttempts: 0\n"),
			[]string{
				`p.yaml:18: spec.remediation.timeout: must be greater than 0, got 0s`,
				`p.yaml:19: spec.remediation.verify.within: must be greater than 0, got -1s`,
				`p.yaml:20: spec.remediation.backoff: must not be negative, got -1s`,
				`p.yaml:21: spec.remediation.cooldown: invalid duration "soon"`,
				`p.yaml:22: spec.remediation.maxAttempts: must be at least 1, got 0`,
			}},
		{"params not a mapping", edit("    timeout: 30s\n", "    timeout: 30s\n    params: [a]\n"),
			[]string{`p.yaml:19: spec.remediation.params: want a mapping of parameters, got a list`}},
		{"params inf", edit("    timeout: 30s\n", "    timeout: 30s\n    params: {x: .inf}\n"),
			[]string{`p.yaml:19: spec.remediation.params.x: number .inf cannot be represented in JSON; quote it to pass a string`}},
		{"params duplicate key", edit("    timeout: 30s\n", "    timeout: 30s\n    params:\n      a: 1\n      a: 2\n"),
			[]string{`p.yaml:21: spec.remediation.params.a: duplicate key (first set at line 20)`}},
		{"maxConcurrent zero", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {maxConcurrent: 0}\n"),
			[]string{`p.yaml:19: spec.limits.maxConcurrent: want a positive number such as 3 or a percent from 1% to 100% such as "10%", got "0"`}},
		{"maxConcurrent 101%", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {maxConcurrent: \"101%\"}\n"),
			[]string{`p.yaml:19: spec.limits.maxConcurrent: want a positive number such as 3 or a percent from 1% to 100% such as "10%", got "101%"`}},
		{"maxConcurrent garbage", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {maxConcurrent: lots}\n"),
			[]string{`p.yaml:19: spec.limits.maxConcurrent: want a positive number such as 3 or a percent from 1% to 100% such as "10%", got "lots"`}},
		{"maxConcurrent list", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {maxConcurrent: [1]}\n"),
			[]string{`p.yaml:19: spec.limits.maxConcurrent: want a number such as 3 or a percent such as "10%", got a list`}},
		{"maxPerHour zero", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {maxPerHour: 0}\n"),
			[]string{`p.yaml:19: spec.limits.maxPerHour: must be at least 1 (leave it out for no limit), got 0`}},
		{"breaker failures negative", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {breaker: {failures: -1}}\n"),
			[]string{`p.yaml:19: spec.limits.breaker.failures: must be from 0 (off) to 1000, got -1`}},
		{"breaker window zero", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {breaker: {failures: 3, window: 0s}}\n"),
			[]string{`p.yaml:19: spec.limits.breaker.window: must be greater than 0 and at most 168h, got 0s`}},
		{"correlation percent too big", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {correlation: {percent: 150}}\n"),
			[]string{`p.yaml:19: spec.limits.correlation.percent: must be from 0 (off) to 100, got 150`}},
		{"correlation minAgents zero", edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {correlation: {percent: 50, minAgents: 0}}\n"),
			[]string{`p.yaml:19: spec.limits.correlation.minAgents: must be at least 1, got 0`}},
		{"approvalTimeout without approval", edit("    timeout: 30s\n", "    timeout: 30s\n    approvalTimeout: 5m\n"),
			[]string{`p.yaml:19: spec.remediation.approvalTimeout: only means something with requireApproval: true`}},
		{"offline without autonomous", edit("  check:\n", "  offline: {maxPerHour: 2}\n  check:\n"),
			[]string{`p.yaml:8: spec.offline: only means something with autonomous: true`}},
		{"offline budget too big", edit("  check:\n", "  autonomous: true\n  offline: {maxPerHour: 100}\n  check:\n"),
			[]string{`p.yaml:9: spec.offline.maxPerHour: must be from 1 to 60, got 100`}},
		{"autonomous with approval", edit("  check:\n", "  autonomous: true\n  check:\n", "    timeout: 30s\n", "    timeout: 30s\n    requireApproval: true\n"),
			[]string{`p.yaml:8: spec.autonomous: cannot be combined with requireApproval`}},
		{"webhook not http", edit("    timeout: 30s\n", "    timeout: 30s\n  escalate: {webhook: \"mailto:ops@example.com\"}\n"),
			[]string{`p.yaml:19: spec.escalate.webhook: want an absolute http:// or https:// URL, got "mailto:ops@example.com"`}},
		{"autonomous with when", edit("  check:\n", "  autonomous: true\n  check:\n", "    window: 5\n", "    window: 5\n    when: 'result.status != \"ok\"'\n"),
			[]string{`p.yaml:17: spec.trigger.when: cannot be combined with autonomous: true: an agent acting alone counts only CRITICAL results and does not evaluate when expressions (tend-agent does not embed CEL); remove when, or autonomous`}},
		{"autonomous not a bool", edit("  check:\n", "  autonomous: maybe\n  check:\n"),
			[]string{`p.yaml:8: spec.autonomous: want true or false, got "maybe"`}},
		{"spec not a mapping", "apiVersion: tend.dev/v1\nkind: Policy\nmetadata: {name: x}\nspec: [1]\n",
			[]string{`p.yaml:4: spec: want a mapping for spec, got a list`}},
		{"document not a mapping", "- a\n- b\n",
			[]string{`p.yaml:1: want a mapping for the document, got a list`}},
		{"syntax error", "apiVersion: tend.dev/v1\nkind: Policy\n  bad: : indent\n",
			[]string{`p.yaml:3: invalid YAML: mapping values are not allowed in this context`}},
		{"empty file", "# nothing here\n---\n",
			[]string{`p.yaml: no policies found: a file holds one or more Policy documents separated by "---"`}},
		{"merge keys", edit("  trigger:\n", "  trigger:\n    <<: {failures: 1}\n"),
			[]string{`p.yaml:14: spec.trigger: merge keys (<<) are not supported: write the fields out`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := Parse("p.yaml", []byte(tc.yaml))
			require.Error(t, err)
			require.Nil(t, ps, "no policies on error")
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			require.Equal(t, "p.yaml", verr.File)
			lines := strings.Split(err.Error(), "\n")
			for _, want := range tc.want {
				found := false
				for _, l := range lines {
					if strings.HasPrefix(l, want) {
						found = true
					}
				}
				require.Truef(t, found, "want a line starting with\n  %s\ngot\n  %s", want, strings.Join(lines, "\n  "))
			}
			require.Len(t, verr.Errors, len(tc.want), "errors:\n%s", err)
		})
	}
}

func TestParseCollectsEveryError(t *testing.T) {
	bad := edit("type: http", "type: htp", "window: 5", "window: 0")
	bad = strings.Replace(bad, "tend.dev/v1", "v2", 1)
	_, err := Parse("p.yaml", []byte(bad))
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	require.Len(t, verr.Errors, 3, "%v", err)
	// Sorted by line.
	require.Equal(t, 1, verr.Errors[0].Line)
	require.Equal(t, 9, verr.Errors[1].Line)
	require.Equal(t, 15, verr.Errors[2].Line)
	var fe FieldError
	require.True(t, errors.As(err, &fe))
	require.Equal(t, FieldError{File: "p.yaml", Line: 1, Field: "apiVersion", Msg: `unsupported apiVersion "v2" (want "tend.dev/v1")`}, fe)
}

func TestErrorListIsCapped(t *testing.T) {
	var b strings.Builder
	for i := range 60 {
		b.WriteString(strings.Replace(base, "name: web", "name: web-"+strconv.Itoa(i), 1))
		b.WriteString("    bogus: 1\n---\n")
	}
	_, err := Parse("many.yaml", []byte(b.String()))
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	require.Len(t, verr.Errors, 60)
	lines := strings.Split(err.Error(), "\n")
	require.Len(t, lines, 51)
	require.Equal(t, "many.yaml: ... and 10 more problems", lines[50])
}

func TestParseMultiDocument(t *testing.T) {
	second := strings.Replace(base, "name: web", "name: web-2", 1)
	content := "---\n" + base + "---\n# just a comment\n---\n" + second + "---\n"
	ps, err := Parse("multi.yaml", []byte(content))
	require.NoError(t, err)
	require.Len(t, ps, 2)
	require.Equal(t, "web", ps[0].Name())
	require.Equal(t, "web-2", ps[1].Name())

	t.Run("one bad document fails the file", func(t *testing.T) {
		bad := strings.Replace(second, "type: http", "type: htp", 1)
		content := base + "---\n" + bad
		ps, err := Parse("multi.yaml", []byte(content))
		require.Nil(t, ps)
		// base has 18 lines, then "---", so the second document's line 9 is line 28.
		require.EqualError(t, err, `multi.yaml:28: spec.check.type: unknown check type "htp" (want one of process, disk, tcp, http, command, service)`)
	})
	t.Run("duplicate names", func(t *testing.T) {
		ps, err := Parse("multi.yaml", []byte(base+"---\n"+base))
		require.Nil(t, ps)
		require.EqualError(t, err, `multi.yaml:23: metadata.name: duplicate policy name "web" (also defined at line 4): names are unique within a file`)
	})
	t.Run("syntax error after a good document", func(t *testing.T) {
		ps, err := Parse("multi.yaml", []byte(base+"---\nfoo: [\n"))
		require.Nil(t, ps)
		require.ErrorContains(t, err, "multi.yaml:")
		require.ErrorContains(t, err, "invalid YAML")
	})
	t.Run("errors in several documents", func(t *testing.T) {
		bad1 := strings.Replace(base, "type: http", "type: htp", 1)
		bad2 := strings.Replace(second, "window: 5", "window: 500", 1)
		_, err := Parse("multi.yaml", []byte(bad1+"---\n"+bad2))
		var verr *ValidationError
		require.ErrorAs(t, err, &verr)
		require.Len(t, verr.Errors, 2)
		require.Equal(t, 9, verr.Errors[0].Line)
		require.Equal(t, 34, verr.Errors[1].Line)
	})
}

func TestSpecJSONRoundTrip(t *testing.T) {
	files, err := filepath.Glob(examplePath("*.yaml"))
	require.NoError(t, err)
	var ps []*Policy
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		got, err := Parse(f, b)
		require.NoError(t, err)
		ps = append(ps, got...)
	}
	more, err := Parse("b.yaml", []byte(edit("    timeout: 30s\n", "    timeout: 30s\n    params: {n: 3, f: 1.5, s: \"<&>\", l: [true, null], m: {k: v}, t: 2024-01-02}\n")))
	require.NoError(t, err)
	ps = append(ps, more...)
	for _, p := range ps {
		t.Run(p.Name(), func(t *testing.T) {
			j, err := p.SpecJSON()
			require.NoError(t, err)
			require.True(t, json.Valid(j))
			j2, err := p.SpecJSON()
			require.NoError(t, err)
			require.Equal(t, j, j2, "deterministic")

			back, err := FromSpecJSON(p.Name(), 7, j)
			require.NoError(t, err)
			require.Equal(t, uint64(7), back.Version)
			require.Equal(t, p.Spec, back.Spec)
			require.Equal(t, APIVersion, back.APIVersion)
			require.Equal(t, Kind, back.Kind)
			j3, err := back.SpecJSON()
			require.NoError(t, err)
			require.Equal(t, string(j), string(j3))

			// The YAML form parses back to the same policy.
			y, err := back.YAML()
			require.NoError(t, err)
			again, err := Parse("again.yaml", y)
			require.NoError(t, err, "%s", y)
			require.Equal(t, p.Spec, again[0].Spec)
		})
	}
	j, err := more[0].SpecJSON()
	require.NoError(t, err)
	require.Contains(t, string(j), `"params":{"f":1.5,"l":[true,null],"m":{"k":"v"},"n":3,"s":"<&>","t":"2024-01-02"}`)
	require.Contains(t, string(j), `"interval":"5s"`)
	require.Contains(t, string(j), `"cooldown":"10m"`)

	t.Run("unknown stored field", func(t *testing.T) {
		_, err := FromSpecJSON("x", 1, []byte(`{"selector":{"matchLabels":{"a":"b"}},"surprise":1}`))
		require.ErrorContains(t, err, `unknown field "surprise"`)
	})
	t.Run("bad duration", func(t *testing.T) {
		_, err := FromSpecJSON("x", 1, []byte(`{"check":{"interval":"soon"}}`))
		require.ErrorContains(t, err, `invalid duration "soon"`)
	})
}

func TestDurationString(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                  "0s",
		500 * time.Millisecond:             "500ms",
		5 * time.Second:                    "5s",
		10 * time.Second:                   "10s",
		10 * time.Minute:                   "10m",
		90 * time.Second:                   "1m30s",
		time.Hour:                          "1h",
		time.Hour + 10*time.Minute:         "1h10m",
		time.Hour + time.Second:            "1h0m1s",
		-time.Second:                       "-1s",
		2*time.Hour + 500*time.Millisecond: "2h0m0.5s",
	} {
		require.Equal(t, want, Duration(d).String())
		back, err := ParseDuration(want)
		require.NoError(t, err)
		require.Equal(t, d, back.D())
	}
}

func TestMatches(t *testing.T) {
	p := &Policy{Spec: Spec{Selector: Selector{MatchLabels: map[string]string{"role": "web", "zone": "a"}}}}
	cases := []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"role": "web", "zone": "a"}, true},
		{map[string]string{"role": "web", "zone": "a", "extra": "x"}, true},
		{map[string]string{"role": "web", "zone": "b"}, false},
		{map[string]string{"role": "web"}, false},
		{map[string]string{"role": "web", "zone": ""}, false},
		{nil, false},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, p.Matches(tc.labels), "%v", tc.labels)
	}
	empty := &Policy{}
	require.False(t, empty.Matches(map[string]string{"role": "web"}), "an empty selector matches nothing")
}

func TestMaxConcurrentLimit(t *testing.T) {
	cases := []struct {
		m       MaxConcurrent
		matched int
		want    int
	}{
		{"3", 100, 3},
		{"10%", 100, 10},
		{"10%", 15, 2},
		{"10%", 1, 1},
		{"10%", 0, 1},
		{"100%", 7, 7},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, tc.m.Limit(tc.matched), "%s of %d", tc.m, tc.matched)
	}
	require.Greater(t, MaxConcurrent("").Limit(5), 1<<30)

	// YAML integers are accepted and kept as their decimal string.
	ps, err := Parse("l.yaml", []byte(edit("    timeout: 30s\n", "    timeout: 30s\n  limits: {maxConcurrent: 4}\n")))
	require.NoError(t, err)
	require.Equal(t, MaxConcurrent("4"), ps[0].Spec.Limits.MaxConcurrent)
}

func TestCheckSpec(t *testing.T) {
	check := func(sub string) *Policy {
		t.Helper()
		typ, _, _ := strings.Cut(strings.TrimSpace(sub), ":")
		y := edit(`    http: {url: "http://127.0.0.1:8080/healthz"}`, sub, "type: http", "type: "+typ)
		ps, err := Parse("c.yaml", []byte(y))
		require.NoError(t, err)
		return ps[0]
	}
	cases := []struct {
		sub  string
		want *agentv1.CheckSpec // only Check is set
	}{
		{`    process: {pidfile: /run/x.pid}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Pidfile: "/run/x.pid"}}}},
		{`    process: {name: nginx}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Name: "nginx"}}}},
		{`    disk: {path: /var, maxUsedPercent: 90.5}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: "/var", MaxUsedPercent: 90.5}}}},
		{`    tcp: {address: "[::1]:5432"}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: "[::1]:5432"}}}},
		{`    http: {url: "https://x/h", expectStatus: 204}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: "https://x/h", ExpectStatus: 204}}}},
		{`    http: {url: "https://x/h"}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: "https://x/h", ExpectStatus: 200}}}},
		{`    command: {argv: [/bin/check, "-w", "5"]}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: []string{"/bin/check", "-w", "5"}}}}},
		{`    service: {name: nginx.service}`, &agentv1.CheckSpec{Check: &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: "nginx.service"}}}},
	}
	for _, tc := range cases {
		t.Run(strings.TrimSpace(tc.sub), func(t *testing.T) {
			got := check(tc.sub).CheckSpec(4)
			want := tc.want
			want.Id, want.PolicyVersion = "web", 4
			want.Interval, want.Timeout = durationpb.New(5*time.Second), durationpb.New(2*time.Second)
			require.True(t, proto.Equal(want, got), "want %v\ngot  %v", want, got)
		})
	}
}

func TestParamsAliasBomb(t *testing.T) {
	y := base + `    params:
      a: &a [x, x, x, x, x, x, x, x, x, x]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
`
	_, err := Parse("bomb.yaml", []byte(y))
	require.Error(t, err)
	require.Contains(t, err.Error(), "too large")
}
