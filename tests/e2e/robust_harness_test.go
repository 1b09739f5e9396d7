package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/failpoint"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// The fault-injection harness of the robustness scenarios (robust_test.go):
// a control plane and agents built with the failpoints tag, a workload of
// results and remediations with a side effect on the host, helpers to kill,
// stop, partition and restart, and the invariant check at the end
// (robust_invariants_test.go).
//
// Sizes come from the environment, so that `make test` runs each scenario
// once, briefly, and `make robustness` longer and in a loop:
//
//	ROBUST_FAULTS     faults injected per scenario run (default 1)
//	ROBUST_PARTITION  how long a partition lasts (default 12s)
//	ROBUST_STOP       how long an agent stays SIGSTOPped (default 17s:
//	                  beyond TTL + grace, so it is marked down meanwhile)
//	ROBUST_LONG       set: also the scenarios that take minutes
//	ROBUST_REPORT     file to append one line per run to (make robustness
//	                  sums them up per scenario)
//	TEND_FP_BIN_DIR   failpoint binaries (make build-failpoints writes
//	                  bin-fp/); without it they are built once per test
//	                  binary

type robustConfig struct {
	faults    int
	partition time.Duration
	stop      time.Duration
	report    string
}

func loadRobustConfig(t *testing.T) robustConfig {
	t.Helper()
	c := robustConfig{faults: 1, partition: 12 * time.Second, stop: 17 * time.Second, report: os.Getenv("ROBUST_REPORT")}
	if v := os.Getenv("ROBUST_FAULTS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "ROBUST_FAULTS")
		require.Positive(t, n, "ROBUST_FAULTS")
		c.faults = n
	}
	for env, d := range map[string]*time.Duration{"ROBUST_PARTITION": &c.partition, "ROBUST_STOP": &c.stop} {
		if v := os.Getenv(env); v != "" {
			x, err := time.ParseDuration(v)
			require.NoError(t, err, env)
			*d = x
		}
	}
	return c
}

var (
	fpOnce sync.Once
	fpDir  string
	fpErr  error
)

// fpBin is the path of a binary built with the failpoints tag.
func fpBin(t *testing.T, name string) string {
	t.Helper()
	fpOnce.Do(func() {
		if d := os.Getenv("TEND_FP_BIN_DIR"); d != "" {
			fpDir, fpErr = filepath.Abs(d)
			return
		}
		fpDir = filepath.Join(binDir, "failpoints")
		root, _ := filepath.Abs("../..")
		cmd := exec.Command("go", "build", "-tags", "failpoints,grpcnotrace", "-o", fpDir+"/", "./cmd/tend-controlplane", "./cmd/tend-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fpErr = fmt.Errorf("go build -tags failpoints: %v\n%s", err, out)
		}
	})
	require.NoError(t, fpErr)
	p := filepath.Join(fpDir, name)
	_, err := os.Stat(p)
	require.NoError(t, err, "failpoint binary %s (make build-failpoints)", p)
	return p
}

// robustHost is one agent of a scenario and its host-side files.
type robustHost struct {
	name  string
	dir   string // label robust_dir: runs, broken-N, agent.yaml
	data  string // --data-dir
	cfg   string
	ns    string // network namespace it runs in ("": the test's)
	agent *agentProc
	// when it was last broken.
	brokenAt time.Time
}

func (h *robustHost) runs() string { return filepath.Join(h.dir, "runs") }

// broken is the file whose presence fails policy i's check on the host.
func (h *robustHost) broken(i int) string { return filepath.Join(h.dir, robustFlag(i)) }

func robustFlag(i int) string { return fmt.Sprintf("broken-%d", i) }

// robustWorld is one scenario run: a control plane, its agents, the faults
// injected so far.
type robustWorld struct {
	t        *testing.T
	cfg      robustConfig
	scenario string
	cpDir    string
	cpAddr   string
	cpHTTP   string
	cpNS     string
	cp       *controlPlane
	hosts    []*robustHost
	policies int
	faults   int
	started  time.Time
}

// robustOptions shape a world.
type robustOptions struct {
	agents int
	// net: the control plane runs in a network namespace of its own, the
	// first agent in another one, joined by a veth link that the test can
	// cut (robust_netns_test.go); the other agents stay in the test's
	// namespace.
	net *netTopo
	// partitioned: how many agents (the first ones) run in the agent's
	// namespace of net, cut off together (0: one).
	partitioned int
	// outboxMax of the first agent (0: the default).
	outboxMax int
	// policies is how many remediation policies each agent has (default
	// 1), each with its own check and broken file; their tasks queue up
	// behind one another on the agent.
	policies int
}

// robustScript is policy i's remediation: it records the run on the host
// (time in Unix nanoseconds, and the policy), takes a second, repairs the
// host and says which run it was. It is the exact argv the agent allows
// (with dir substituted).
func robustScript(dir string, i int) []string {
	return []string{"/bin/sh", "-c", fmt.Sprintf(
		`ts=$(date +%%s%%N); echo "$ts robust-flag-%d" >> %s/runs; sleep 1; rm -f %s/%s; echo "%s$ts"`, i, dir, dir, robustFlag(i), robustRunMarker)}
}

func yamlList(xs []string) string {
	b, _ := json.Marshal(xs) // a JSON array of strings is a YAML flow sequence
	return string(b)
}

// Policy i: fail while the host's broken file exists, repair with the
// script; quick retries, no cooldown to speak of.
func robustPolicy(i int) string {
	check := []string{"/bin/sh", "-c", fmt.Sprintf(`if [ -e {{ .labels.robust_dir }}/%s ]; then echo broken; exit 2; fi; echo ok`, robustFlag(i))}
	return fmt.Sprintf(`apiVersion: tend.dev/v1
kind: Policy
metadata: {name: robust-flag-%d}
spec:
  selector: {matchLabels: {role: robust}}
  check:
    type: command
    interval: 1s
    command: {argv: %s}
  trigger: {failures: 2, window: 3}
  remediation:
    action: exec.run
    params: {argv: %s}
    timeout: 10s
    verify: {within: 10s}
    maxAttempts: 6
    backoff: 1s
    cooldown: 1s
  limits: {maxConcurrent: "100%%", maxPerHour: 1000}
`, i, yamlList(check), yamlList(robustScript("{{ .labels.robust_dir }}", i)))
}

// newRobustWorld starts the control plane and the agents (no failpoint
// armed), applies the policy and waits until every agent reports it ok.
func newRobustWorld(t *testing.T, scenario string, o robustOptions) *robustWorld {
	t.Helper()
	w := &robustWorld{t: t, cfg: loadRobustConfig(t), scenario: scenario, cpDir: t.TempDir(), policies: max(o.policies, 1), started: time.Now()}
	if o.net != nil {
		w.cpNS = o.net.nsCP
		w.cpAddr = o.net.cpIP + ":7400"
		w.cpHTTP = o.net.cpIP + ":7480"
	} else {
		w.cpAddr, w.cpHTTP = freeAddr(t), freeAddr(t)
	}
	w.startCP("")
	tok := w.cp.token(t, "--uses", strconv.Itoa(o.agents))
	for i := range o.agents {
		dir := t.TempDir()
		h := &robustHost{name: fmt.Sprintf("robust-%d", i+1), dir: dir, data: filepath.Join(dir, "data"), cfg: filepath.Join(dir, "agent.yaml")}
		if i < max(o.partitioned, 1) && o.net != nil {
			h.ns = o.net.nsAgent
		}
		var cfg strings.Builder
		fmt.Fprintf(&cfg, "pluginDir: %q\n", binDir)
		if i == 0 && o.outboxMax > 0 {
			fmt.Fprintf(&cfg, "outboxMax: %d\n", o.outboxMax)
		}
		cfg.WriteString("checks:\n")
		for _, c := range []string{"a", "b", "c"} {
			fmt.Fprintf(&cfg, "  - {name: disk-%s, type: disk, interval: 1s, disk: {path: /, maxUsedPercent: 100}}\n", c)
		}
		var scripts []string
		for p := 1; p <= w.policies; p++ {
			scripts = append(scripts, yamlList(robustScript(dir, p)))
		}
		fmt.Fprintf(&cfg, "actions:\n  exec.run:\n    commands: [%s]\n", strings.Join(scripts, ", "))
		require.NoError(t, os.WriteFile(h.cfg, []byte(cfg.String()), 0o644))
		w.hosts = append(w.hosts, h)
		w.startAgent(h, tok, "")
	}
	for _, h := range w.hosts {
		w.cp.waitAgentStatus(t, h.name, "connected", 30*time.Second)
	}
	var pols []string
	for p := 1; p <= w.policies; p++ {
		pols = append(pols, robustPolicy(p))
	}
	applyFile(t, w.cp, strings.Join(pols, "---\n"))
	require.Eventually(t, func() bool {
		for _, h := range w.hosts {
			out, _, err := w.cp.tendctl(t, "get", "checks", "--agent", h.name, "-o", "json")
			if err != nil || strings.Count(out, `"robust-flag-`) < w.policies {
				return false
			}
		}
		return true
	}, 30*time.Second, 200*time.Millisecond, "the agents never reported the policies' checks")
	return w
}

// robustCommand runs path inside the network namespace ns ("": the test's),
// with the failpoints fp armed (TEND_FAILPOINTS; empty: none).
func robustCommand(ns, path string, fp string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ns != "" {
		// ip netns exec execs the binary in place: the pid is the binary's.
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns, path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Env = append(os.Environ(), failpoint.EnvVar+"="+fp)
	return cmd
}

// startCP starts the control plane with the failpoints fp armed and waits
// until it answers /healthz.
func (w *robustWorld) startCP(fp string) {
	t := w.t
	t.Helper()
	args := []string{"--data-dir", w.cpDir, "--listen", w.cpAddr, "--http-listen", w.cpHTTP, "--history-per-check", "1000000"}
	p := launch(t, "tend-controlplane", robustCommand(w.cpNS, fpBin(t, "tend-controlplane"), fp, args...))
	c := &controlPlane{proc: p, dataDir: w.cpDir, addr: w.cpAddr, http: w.cpHTTP}
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + w.cpHTTP + "/healthz")
		if err != nil {
			require.False(t, c.exited(), "control plane exited:\n%s", c.output())
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 30*time.Second, 50*time.Millisecond)
	w.cp = c
}

// restartCP stops the control plane gracefully (if it still runs) and
// starts it again with fp armed.
func (w *robustWorld) restartCP(fp string) {
	w.cp.stop(syscall.SIGTERM, 10*time.Second)
	w.startCP(fp)
}

func (w *robustWorld) startAgent(h *robustHost, token, fp string) {
	t := w.t
	t.Helper()
	args := []string{"--server", w.cpAddr, "--data-dir", h.data, "--name", h.name, "--reconnect-max-backoff", "2s",
		"--config", h.cfg, "--labels", "role=robust,robust_dir=" + h.dir}
	if token != "" {
		args = append(args, "--token", token)
	}
	h.agent = &agentProc{proc: launch(t, "tend-agent "+h.name, robustCommand(h.ns, fpBin(t, "tend-agent"), fp, args...)), dataDir: h.data}
}

// restartAgent stops the agent gracefully (if it still runs) and starts it
// again with fp armed.
func (w *robustWorld) restartAgent(h *robustHost, fp string) {
	h.agent.stop(syscall.SIGTERM, 10*time.Second)
	w.startAgent(h, "", fp)
}

// breakHost makes the host's policy checks fail until remediations repair
// them.
func (w *robustWorld) breakHost(h *robustHost) {
	h.brokenAt = time.Now()
	for p := 1; p <= w.policies; p++ {
		require.NoError(w.t, os.WriteFile(h.broken(p), nil, 0o644))
	}
}

// waitTaskCreated waits until the control plane has stored a task for h
// since h was last broken.
func (w *robustWorld) waitTaskCreated(h *robustHost, within time.Duration) {
	t := w.t
	t.Helper()
	admin := w.cp.admin(t)
	require.Eventually(t, func() bool {
		resp, err := admin.ListTasks(ctxTimeout(t, 5*time.Second), &adminv1.ListTasksRequest{Agent: h.name})
		if err != nil {
			return false
		}
		for _, tk := range resp.GetTasks() {
			if !tk.GetCreatedAt().AsTime().Before(h.brokenAt) {
				return true
			}
		}
		return false
	}, within, 20*time.Millisecond, "no task for %s", h.name)
}

// waitKilled waits for p to die by the failpoint name and counts the fault.
func (w *robustWorld) waitKilled(p *proc, name string, within time.Duration) {
	t := w.t
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("failpoint %s did not fire within %s in %s", name, within, p.name)
	}
	out := p.output()
	require.Contains(t, out, failpoint.LogPrefix+name+": exit", "%s exited, but not by the failpoint:\n%s", p.name, tail(out, 4000))
	w.faults++
	t.Logf("fault %d: %s killed at %s", w.faults, p.name, name)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitSettled waits until every host is repaired and every incident is
// closed. A host whose incident was escalated is repaired by hand (as a
// person would), and its incident counted as escalated.
func (w *robustWorld) waitSettled(within time.Duration) {
	t := w.t
	t.Helper()
	deadline := time.Now().Add(within)
	admin := w.cp.admin(t)
	for {
		resp, err := admin.ListIncidents(ctxTimeout(t, 5*time.Second), &adminv1.ListIncidentsRequest{})
		if err == nil {
			open := 0
			latest := map[string]*adminv1.Incident{} // by agent name and policy: newest first
			for _, inc := range resp.GetIncidents() {
				if !store.IncidentTerminal(inc.GetState()) {
					open++
				}
				if k := inc.GetAgent() + "/" + inc.GetPolicy(); latest[k] == nil {
					latest[k] = inc
				}
			}
			broken := 0
			for _, h := range w.hosts {
				for p := 1; p <= w.policies; p++ {
					if _, err := os.Stat(h.broken(p)); err != nil {
						continue
					}
					broken++
					inc := latest[fmt.Sprintf("%s/robust-flag-%d", h.name, p)]
					if inc != nil && inc.GetState() == store.IncidentEscalated && open == 0 && !inc.GetOpenedAt().AsTime().Before(h.brokenAt) {
						t.Logf("%s: incident %s escalated (%s); repaired by hand", h.name, inc.GetId(), inc.GetReason())
						require.NoError(t, os.Remove(h.broken(p)))
					}
				}
			}
			if open == 0 && broken == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Logf("not settled within %s: incidents still open or hosts still broken (the invariant check says which)", within)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// settleWithin bounds waitSettled: a task lost on the way is given up only
// after its expiry (60 s) plus the control plane's margin (45 s), then
// retried.
const settleWithin = 150 * time.Second

// finish stops every process, checks the invariants, prints the figures
// and appends them to ROBUST_REPORT.
func (w *robustWorld) finish() *invariantReport {
	t := w.t
	t.Helper()
	for _, h := range w.hosts {
		h.agent.stop(syscall.SIGTERM, 10*time.Second)
	}
	w.cp.stop(syscall.SIGTERM, 10*time.Second)
	var hosts []invariantHost
	for _, h := range w.hosts {
		hosts = append(hosts, invariantHost{Name: h.name, DataDir: h.data, Runs: h.runs()})
	}
	rep := checkInvariants(w.cpDir, hosts)
	t.Logf("%s: %d faults injected; results checked %d (stored %d, pending %d, dropped %d); tasks checked %d %v, runs %d; incidents %d (resolved %d, escalated %d); bbolt files checked %d; invariant violations %d; took %s",
		w.scenario, w.faults, rep.Results, rep.Stored, rep.Pending, rep.Dropped, rep.Tasks, rep.TaskStates, rep.Runs,
		rep.Incidents, rep.Resolved, rep.Escalated, rep.checkedDBs, len(rep.Violations), time.Since(w.started).Round(100*time.Millisecond))
	for _, n := range rep.Notes {
		t.Log(n)
	}
	for _, v := range rep.Violations {
		t.Errorf("invariant violation: %s", v)
	}
	// Not one of the invariants, but no fault here is a reason to give up:
	// the policies allow 6 attempts, and the hosts can always be repaired.
	if rep.Escalated > 0 {
		t.Errorf("%d incidents escalated (see their stories above): a fault cost more than it should have", rep.Escalated)
	}
	if w.cfg.report != "" {
		f, err := os.OpenFile(w.cfg.report, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		require.NoError(t, err)
		fmt.Fprintf(f, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", w.scenario, w.faults, rep.Results, rep.Tasks, len(rep.Violations),
			rep.Runs, rep.Escalated, time.Since(w.started).Milliseconds())
		require.NoError(t, f.Close())
	}
	return rep
}
