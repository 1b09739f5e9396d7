package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"tend.dev/tend/agent/watchdog"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// readmeExample is the agent.yaml example of README.md ("The agent's own
// config"), read from the README itself so the two can never drift.
var readmeExample = func() string {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		panic(err)
	}
	s := string(b)
	i := strings.Index(s, "### The agent's own config")
	j := strings.Index(s[i:], "```yaml\n")
	k := strings.Index(s[i+j+8:], "```")
	return s[i+j+8 : i+j+8+k]
}()

func requireProtoEqual(t *testing.T, want, got proto.Message) {
	t.Helper()
	require.True(t, proto.Equal(want, got), "want:\n%s\ngot:\n%s", prototext.Format(want), prototext.Format(got))
}

// The example in README.md must keep parsing; fail loudly if the README
// drifts from this copy.
func TestReadmeExampleParses(t *testing.T) {
	c, err := Parse("agent.yaml", []byte(readmeExample))
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:7400", c.Server)
	require.Equal(t, "/var/lib/tend", c.DataDir)
	require.Equal(t, "web-1", c.Name)
	require.Equal(t, map[string]string{"role": "web", "zone": "a"}, c.Labels)
	require.Equal(t, 100000, c.OutboxMax)
	require.Equal(t, "/usr/lib/tend/plugins", c.PluginDir)
	require.Equal(t, map[string]ActionRule{
		"process.restart": {Commands: [][]string{{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"}}, Pidfiles: []string{"/run/nginx.pid"}},
		"disk.cleanup":    {Paths: []string{"/var/log/app"}},
		"exec.run":        {Commands: [][]string{{"/usr/local/bin/rotate-logs", "--now"}}},
		"service.restart": {Units: []string{"nginx.service"}},
		"process.kill":    {Signals: []string{"TERM"}, Names: []string{"stuck-worker"}},
	}, c.Actions)

	specs, err := c.Specs()
	require.NoError(t, err)
	require.Len(t, specs, 1)
	requireProtoEqual(t, &agentv1.CheckSpec{
		Id:       "local/root-disk",
		Interval: durationpb.New(30 * time.Second),
		Timeout:  durationpb.New(10 * time.Second),
		Check:    &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: "/", MaxUsedPercent: 90}},
	}, specs[0])
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(path, []byte(readmeExample), 0o600))
	c, err := Load(path)
	require.NoError(t, err)
	require.Equal(t, "web-1", c.Name)

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Contains(t, err.Error(), "agent config")

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("nope: 1\n"), 0o600))
	_, err = Load(bad)
	require.ErrorContains(t, err, bad, "errors name the file")
	require.ErrorContains(t, err, "nope")
}

func TestEmptyFileIsOK(t *testing.T) {
	for _, content := range []string{"", "\n", "# only a comment\n", "---\n", "null\n", "~\n"} {
		t.Run(content, func(t *testing.T) {
			c, err := Parse("agent.yaml", []byte(content))
			require.NoError(t, err)
			require.NotNil(t, c)
			require.Empty(t, c.Checks)
			specs, err := c.Specs()
			require.NoError(t, err)
			require.Empty(t, specs)
		})
	}
}

func TestTopLevelFields(t *testing.T) {
	c, err := Parse("agent.yaml", []byte(`server: cp.example:7400
dataDir: /data
name: n1
pluginDir: /usr/lib/tend/plugins
maxBackoff: 45s
outboxMax: 0
`))
	require.NoError(t, err)
	require.Equal(t, "cp.example:7400", c.Server)
	require.Equal(t, "/data", c.DataDir)
	require.Equal(t, "/usr/lib/tend/plugins", c.PluginDir)
	require.Equal(t, Duration(45*time.Second), c.MaxBackoff)
	require.Zero(t, c.OutboxMax, "0 means the default")
	lim, err := c.Watchdog.Limits()
	require.NoError(t, err)
	require.Equal(t, watchdog.DefaultLimits(), lim, "no watchdog section: the defaults")
}

func TestWatchdogLimits(t *testing.T) {
	c, err := Parse("agent.yaml", []byte("watchdog: {memory: 100MiB, cpu: 5%, cpuWindow: 2m}\n"))
	require.NoError(t, err)
	lim, err := c.Watchdog.Limits()
	require.NoError(t, err)
	require.Equal(t, watchdog.Limits{Memory: 100 << 20, CPU: 0.05, CPUWindow: 2 * time.Minute}, lim)
	c, err = Parse("agent.yaml", []byte("watchdog: {memory: \"off\", cpu: \"off\"}\n"))
	require.NoError(t, err)
	lim, err = c.Watchdog.Limits()
	require.NoError(t, err)
	require.Zero(t, lim.Memory)
	require.Zero(t, lim.CPU)
}

// Each check type becomes the right CheckSpec, with defaults for interval
// (10s) and timeout (min(interval, 10s)).
func TestCheckSpecs(t *testing.T) {
	d := durationpb.New
	tests := []struct {
		name string
		yaml string // one item of checks:, indented as a list item
		want *agentv1.CheckSpec
	}{
		{
			name: "process by name with defaults",
			yaml: `{name: nginx-up, type: process, process: {name: nginx}}`,
			want: &agentv1.CheckSpec{Id: "local/nginx-up", Interval: d(10 * time.Second), Timeout: d(10 * time.Second),
				Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Name: "nginx"}}},
		},
		{
			name: "process by pidfile",
			yaml: `{name: p, type: process, interval: 5s, process: {pidfile: /run/nginx.pid}}`,
			want: &agentv1.CheckSpec{Id: "local/p", Interval: d(5 * time.Second), Timeout: d(5 * time.Second),
				Check: &agentv1.CheckSpec_Process{Process: &agentv1.ProcessCheck{Pidfile: "/run/nginx.pid"}}},
		},
		{
			name: "disk, long interval caps default timeout at 10s",
			yaml: `{name: root-disk, type: disk, interval: 1m, disk: {path: /var, maxUsedPercent: 85.5}}`,
			want: &agentv1.CheckSpec{Id: "local/root-disk", Interval: d(time.Minute), Timeout: d(10 * time.Second),
				Check: &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: "/var", MaxUsedPercent: 85.5}}},
		},
		{
			name: "disk at 100 percent",
			yaml: `{name: d, type: disk, disk: {path: /, maxUsedPercent: 100}}`,
			want: &agentv1.CheckSpec{Id: "local/d", Interval: d(10 * time.Second), Timeout: d(10 * time.Second),
				Check: &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: "/", MaxUsedPercent: 100}}},
		},
		{
			name: "tcp with explicit timeout",
			yaml: `{name: pg, type: tcp, interval: 30s, timeout: 2s, tcp: {address: "127.0.0.1:5432"}}`,
			want: &agentv1.CheckSpec{Id: "local/pg", Interval: d(30 * time.Second), Timeout: d(2 * time.Second),
				Check: &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: "127.0.0.1:5432"}}},
		},
		{
			name: "tcp ipv6",
			yaml: `{name: v6, type: tcp, tcp: {address: "[::1]:80"}}`,
			want: &agentv1.CheckSpec{Id: "local/v6", Interval: d(10 * time.Second), Timeout: d(10 * time.Second),
				Check: &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: "[::1]:80"}}},
		},
		{
			name: "http defaults expectStatus to 200",
			yaml: `{name: web, type: http, interval: 1s, http: {url: "http://localhost:8080/healthz"}}`,
			want: &agentv1.CheckSpec{Id: "local/web", Interval: d(time.Second), Timeout: d(time.Second),
				Check: &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: "http://localhost:8080/healthz", ExpectStatus: 200}}},
		},
		{
			name: "https with expectStatus",
			yaml: `{name: api, type: http, http: {url: "https://example.com/", expectStatus: 204}}`,
			want: &agentv1.CheckSpec{Id: "local/api", Interval: d(10 * time.Second), Timeout: d(10 * time.Second),
				Check: &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: "https://example.com/", ExpectStatus: 204}}},
		},
		{
			name: "command",
			yaml: `{name: true, type: command, interval: 20s, timeout: 20s, command: {argv: [/bin/sh, -c, "exit 0"]}}`,
			want: &agentv1.CheckSpec{Id: "local/true", Interval: d(20 * time.Second), Timeout: d(20 * time.Second),
				Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: []string{"/bin/sh", "-c", "exit 0"}}}},
		},
		{
			name: "service",
			yaml: `{name: sshd, type: service, service: {name: ssh.service}}`,
			want: &agentv1.CheckSpec{Id: "local/sshd", Interval: d(10 * time.Second), Timeout: d(10 * time.Second),
				Check: &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: "ssh.service"}}},
		},
		{
			name: "interval below 10s makes the default timeout the interval",
			yaml: `{name: fast, type: service, interval: 3s, service: {name: x}}`,
			want: &agentv1.CheckSpec{Id: "local/fast", Interval: d(3 * time.Second), Timeout: d(3 * time.Second),
				Check: &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: "x"}}},
		},
		{
			name: "63-character name",
			yaml: `{name: ` + strings.Repeat("a", 63) + `, type: service, service: {name: x}}`,
			want: &agentv1.CheckSpec{Id: "local/" + strings.Repeat("a", 63), Interval: d(10 * time.Second), Timeout: d(10 * time.Second),
				Check: &agentv1.CheckSpec_Service{Service: &agentv1.ServiceCheck{Name: "x"}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("agent.yaml", []byte("checks:\n  - "+tc.yaml+"\n"))
			require.NoError(t, err)
			require.Len(t, c.Checks, 1)

			spec, err := c.Checks[0].Spec()
			require.NoError(t, err)
			requireProtoEqual(t, tc.want, spec)

			specs, err := c.Specs()
			require.NoError(t, err)
			require.Len(t, specs, 1)
			requireProtoEqual(t, tc.want, specs[0])
		})
	}
}

func TestSpecsKeepsOrder(t *testing.T) {
	c, err := Parse("agent.yaml", []byte(`checks:
  - {name: b, type: service, service: {name: b}}
  - {name: a, type: service, service: {name: a}}
  - {name: c, type: tcp, tcp: {address: "localhost:1"}}
`))
	require.NoError(t, err)
	specs, err := c.Specs()
	require.NoError(t, err)
	var ids []string
	for _, s := range specs {
		ids = append(ids, s.GetId())
	}
	require.Equal(t, []string{"local/b", "local/a", "local/c"}, ids)
}

// Specs on a Config built in code (not through Parse) reports the failing
// check by name.
func TestSpecsError(t *testing.T) {
	c := &Config{Checks: []LocalCheck{
		{Name: "ok", Type: "service", Service: &ServiceParams{Name: "x"}},
		{Name: "broken", Type: "disk"},
	}}
	_, err := c.Specs()
	require.ErrorContains(t, err, "check broken")
	require.ErrorContains(t, err, `needs a "disk" section`)
}

func TestParseErrors(t *testing.T) {
	check := func(item string) string { return "checks:\n  - " + item + "\n" }
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error
	}{
		{"unknown top-level field", "server: x\nservr: y\n", []string{"agent.yaml", "line 2", "field servr not found"}},
		{"unknown check field", check("{name: a, type: service, service: {name: x}, intervall: 5s}"), []string{"field intervall not found"}},
		{"unknown params field", check("{name: a, type: disk, disk: {path: /, maxUsedPercent: 9, max: 1}}"), []string{"field max not found"}},
		{"unknown action rule field", "actions:\n  process.restart: {command: [x]}\n", []string{"field command not found"}},
		{"wrong top-level type", "[]\n", []string{"agent.yaml", "cannot unmarshal"}},
		{"wrong field type", "outboxMax: lots\n", []string{"agent.yaml", "line 1", "cannot unmarshal"}},
		{"bad yaml", "server: [\n", []string{"agent.yaml"}},

		{"duration without unit", check("{name: a, type: service, interval: 5, service: {name: x}}"), []string{"line 2", `bad duration "5"`}},
		{"duration garbage", check("{name: a, type: service, timeout: soon, service: {name: x}}"), []string{`bad duration "soon"`}},
		{"duration not a scalar", check("{name: a, type: service, interval: [5s], service: {name: x}}"), []string{"want a duration"}},
		{"bad maxBackoff", "maxBackoff: 2 minutes\n", []string{"line 1", "bad duration"}},
		{"bad watchdog memory", "watchdog: {memory: 200}\n", []string{"agent.yaml: watchdog.memory: bad memory size \"200\""}},
		{"bad watchdog cpu", "watchdog: {cpu: 0.1}\n", []string{"agent.yaml: watchdog.cpu: bad CPU limit \"0.1\""}},
		{"watchdog window too short", "watchdog: {cpuWindow: 1s}\n", []string{"agent.yaml: watchdog.cpuWindow: must be from 10s to 1h, got 1s"}},
		{"unknown watchdog field", "watchdog: {rss: 1MiB}\n", []string{"field rss not found"}},

		{"unknown type", check("{name: a, type: ping}"), []string{"checks[0]", `unknown check type "ping"`}},
		{"missing type", check("{name: a, service: {name: x}}"), []string{"checks[0]", "type: required"}},
		{"missing section process", check("{name: a, type: process}"), []string{`type process needs a "process" section`}},
		{"missing section disk", check("{name: a, type: disk}"), []string{`type disk needs a "disk" section`}},
		{"missing section tcp", check("{name: a, type: tcp}"), []string{`type tcp needs a "tcp" section`}},
		{"missing section http", check("{name: a, type: http}"), []string{`type http needs a "http" section`}},
		{"missing section command", check("{name: a, type: command}"), []string{`type command needs a "command" section`}},
		{"missing section service", check("{name: a, type: service}"), []string{"service.name: required"}},
		{"wrong section for type", check("{name: a, type: disk, tcp: {address: 'h:1'}}"), []string{`needs a "disk" section`}},
		{"two sections", check("{name: a, type: disk, disk: {path: /, maxUsedPercent: 9}, tcp: {address: 'h:1'}}"), []string{`only the "disk" section may be set`}},

		{"process neither name nor pidfile", check("{name: a, type: process, process: {}}"), []string{"exactly one of name or pidfile"}},
		{"process both name and pidfile", check("{name: a, type: process, process: {name: x, pidfile: /run/x.pid}}"), []string{"exactly one of name or pidfile"}},
		{"relative disk path", check("{name: a, type: disk, disk: {path: var/lib, maxUsedPercent: 9}}"), []string{"disk.path", `"var/lib" must be an absolute path`}},
		{"empty disk path", check("{name: a, type: disk, disk: {maxUsedPercent: 9}}"), []string{"disk.path"}},
		{"disk percent zero", check("{name: a, type: disk, disk: {path: /}}"), []string{"disk.maxUsedPercent"}},
		{"disk percent above 100", check("{name: a, type: disk, disk: {path: /, maxUsedPercent: 100.5}}"), []string{"disk.maxUsedPercent", "(0, 100]"}},
		{"relative command", check("{name: a, type: command, command: {argv: [true]}}"), []string{"command.argv", "absolute path"}},
		{"empty argv", check("{name: a, type: command, command: {argv: []}}"), []string{"command.argv"}},
		{"tcp no port", check("{name: a, type: tcp, tcp: {address: localhost}}"), []string{"tcp.address", `"localhost": want host:port`}},
		{"tcp empty", check("{name: a, type: tcp, tcp: {}}"), []string{"tcp.address"}},
		{"http relative URL", check("{name: a, type: http, http: {url: /healthz}}"), []string{"http.url", "absolute http or https URL"}},
		{"http wrong scheme", check("{name: a, type: http, http: {url: 'ftp://host/'}}"), []string{"http.url"}},
		{"http no host", check("{name: a, type: http, http: {url: 'http:///x'}}"), []string{"http.url"}},
		{"http unparsable", check("{name: a, type: http, http: {url: 'http://[::1'}}"), []string{"http.url"}},
		{"http status too low", check("{name: a, type: http, http: {url: 'http://h/', expectStatus: 99}}"), []string{"http.expectStatus: 99"}},
		{"http status too high", check("{name: a, type: http, http: {url: 'http://h/', expectStatus: 600}}"), []string{"http.expectStatus: 600"}},
		{"service empty name", check("{name: a, type: service, service: {name: ''}}"), []string{"service.name: required"}},

		{"duplicate names", "checks:\n  - {name: a, type: service, service: {name: x}}\n  - {name: a, type: service, service: {name: y}}\n",
			[]string{"checks[1].name", `duplicate check name "a"`}},
		{"uppercase name", check("{name: Root, type: service, service: {name: x}}"), []string{"checks[0].name", `"Root" must be lowercase`}},
		{"empty name", check("{type: service, service: {name: x}}"), []string{"checks[0].name"}},
		{"name with slash", check("{name: a/b, type: service, service: {name: x}}"), []string{"checks[0].name"}},
		{"name with leading dash", check("{name: -a, type: service, service: {name: x}}"), []string{"checks[0].name"}},
		{"name with trailing dash", check("{name: a-, type: service, service: {name: x}}"), []string{"checks[0].name"}},
		{"name too long", check("{name: " + strings.Repeat("a", 64) + ", type: service, service: {name: x}}"), []string{"checks[0].name"}},

		{"timeout above interval", check("{name: a, type: service, interval: 5s, timeout: 6s, service: {name: x}}"), []string{"timeout: 6s must be positive and at most the interval (5s)"}},
		{"timeout above default interval", check("{name: a, type: service, timeout: 11s, service: {name: x}}"), []string{"timeout: 11s", "(10s)"}},
		{"negative timeout", check("{name: a, type: service, timeout: -1s, service: {name: x}}"), []string{"timeout: -1s must be positive"}},
		{"interval below 1s", check("{name: a, type: service, interval: 500ms, service: {name: x}}"), []string{"interval: 500ms is below the minimum of 1s"}},
		{"negative interval", check("{name: a, type: service, interval: -5s, service: {name: x}}"), []string{"interval: -5s is below the minimum"}},

		{"action name without dot", "actions:\n  restart: {}\n", []string{"actions.restart", "<plugin>.<action>"}},
		{"negative outboxMax", "outboxMax: -1\n", []string{"agent.yaml: outboxMax"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("agent.yaml", []byte(tc.yaml))
			require.Error(t, err)
			require.Nil(t, c)
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
		})
	}
}

// All problems are reported at once, each naming the file and field.
func TestParseReportsEveryError(t *testing.T) {
	_, err := Parse("/etc/tend/agent.yaml", []byte(`outboxMax: -5
actions:
  nodot: {}
checks:
  - {name: Bad, type: service, service: {name: x}}
  - {name: ok, type: disk, disk: {path: rel, maxUsedPercent: 9}}
`))
	require.Error(t, err)
	msg := err.Error()
	for _, w := range []string{"checks[0].name", "checks[1]: disk.path", "actions.nodot", "outboxMax"} {
		require.Contains(t, msg, w)
	}
	for _, line := range strings.Split(msg, "\n") {
		require.True(t, strings.HasPrefix(line, "/etc/tend/agent.yaml: "), "line %q does not name the file", line)
	}
}

func TestDurationUnmarshal(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "5s", want: 5 * time.Second},
		{in: "1m30s", want: 90 * time.Second},
		{in: "250ms", want: 250 * time.Millisecond},
		{in: `"2h"`, want: 2 * time.Hour},
		{in: "0", want: 0},
		{in: "5", err: "bad duration"},
		{in: "abc", err: "bad duration"},
		{in: "{a: 1}", err: "want a duration"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			c, err := Parse("agent.yaml", []byte("maxBackoff: "+tc.in+"\n"))
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, Duration(tc.want), c.MaxBackoff)
		})
	}
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		readmeExample,
		"",
		"---\n",
		"server: x\nservr: y\n",
		"checks:\n  - {name: a, type: tcp, tcp: {address: 'h:1'}}\n",
		"checks:\n  - {name: a, type: http, http: {url: 'http://h/', expectStatus: 600}}\n",
		"checks:\n  - {name: a, type: command, command: {argv: [/bin/true]}, interval: 1s, timeout: 1s}\n",
		"checks:\n  - {name: a, type: process, process: {pidfile: /run/x.pid}}\n  - {name: a, type: service}\n",
		"checks:\n  - {name: a, type: disk, disk: {path: /, maxUsedPercent: 1e400}, interval: 9999999h}\n",
		"actions:\n  a.b:\n    commands: [[x]]\n    paths: [/tmp]\n",
		"maxBackoff: -1ns\noutboxMax: -9223372036854775808\n",
		"&a [*a]",
		"a: &a\n  b: *a\n",
		"checks: [{name: x, type: service, service: {name: y}}, ~]\n",
		"labels: {? [a]: b}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse("agent.yaml", b)
		if err != nil {
			require.Nil(t, c)
			require.True(t, strings.HasPrefix(err.Error(), "agent.yaml: "), "error does not name the file: %v", err)
			return
		}
		require.NotNil(t, c)
		// A config that parses has valid checks: Specs cannot fail and
		// yields one spec per check with a unique local id.
		specs, err := c.Specs()
		require.NoError(t, err)
		require.Len(t, specs, len(c.Checks))
		ids := map[string]bool{}
		for _, s := range specs {
			require.True(t, strings.HasPrefix(s.GetId(), LocalPrefix))
			require.False(t, ids[s.GetId()], "duplicate id %s", s.GetId())
			ids[s.GetId()] = true
			iv, to := s.GetInterval().AsDuration(), s.GetTimeout().AsDuration()
			require.GreaterOrEqual(t, iv, time.Second)
			require.Positive(t, to)
			require.LessOrEqual(t, to, iv)
			require.NotNil(t, s.GetCheck())
		}
		require.GreaterOrEqual(t, c.OutboxMax, 0)
		for name := range c.Actions {
			require.Contains(t, name, ".")
		}
	})
}
