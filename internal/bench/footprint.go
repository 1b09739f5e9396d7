package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// FootprintConfig is the agent footprint measure (T9): a real tend-agent
// with Checks local checks every Interval, measured for Duration.
type FootprintConfig struct {
	AgentBin  string // bin/tend-agent
	PluginDir string // where tend-plugin-exec is ("" = no allow-list, no plugin)
	Spawn     SpawnOptions
	Checks    int
	Interval  time.Duration
	Warmup    time.Duration
	Duration  time.Duration
	Sample    time.Duration
	// PerfRecord, if set (the perf binary), runs the agent under `perf
	// record -g` into ProfileDir/agent.perf.data, for `perf report`.
	PerfRecord string
	ProfileDir string
	Log        *slog.Logger
}

// FootprintResult is what the agent used.
type FootprintResult struct {
	Checks          int     `json:"checks"`
	IntervalSeconds float64 `json:"intervalSeconds"`
	WindowSeconds   float64 `json:"windowSeconds"`
	RSSAvgBytes     uint64  `json:"rssAvgBytes"`
	RSSMaxBytes     uint64  `json:"rssMaxBytes"`
	RSSAnonBytes    uint64  `json:"rssAnonBytes"`
	CPUPercent      float64 `json:"cpuPercent"`
	// CPUWithChildrenPercent adds the commands its checks ran.
	CPUWithChildrenPercent float64 `json:"cpuWithChildrenPercent"`
	Threads                int     `json:"threads"`
	PluginRSSBytes         uint64  `json:"pluginRssBytes"`
	Plugins                int     `json:"plugins"`
	ResultsStored          uint64  `json:"resultsStored"`
	// Mappings: the resident memory by what is mapped (the binary's code
	// and data, the agent's database, anonymous memory), largest first.
	Mappings []Mapping `json:"mappings"`
	Profile  string    `json:"profile,omitempty"`
}

// footprintChecks is a typical host's mix: disks, ports, an HTTP health
// endpoint, processes and one command (which forks every interval).
func footprintChecks(n int, interval time.Duration, cpAddr, httpAddr, pidfile string) string {
	iv := interval.String()
	all := []string{
		fmt.Sprintf("  - {name: root-disk, type: disk, interval: %s, disk: {path: /, maxUsedPercent: 95}}", iv),
		fmt.Sprintf("  - {name: tmp-disk, type: disk, interval: %s, disk: {path: /tmp, maxUsedPercent: 95}}", iv),
		fmt.Sprintf("  - {name: cp-port, type: tcp, interval: %s, tcp: {address: %q}}", iv, cpAddr),
		fmt.Sprintf("  - {name: http-port, type: tcp, interval: %s, tcp: {address: %q}}", iv, httpAddr),
		fmt.Sprintf("  - {name: healthz, type: http, interval: %s, http: {url: %q, expectStatus: 200}}", iv, "http://"+httpAddr+"/healthz"),
		fmt.Sprintf("  - {name: cp-process, type: process, interval: %s, process: {pidfile: %q}}", iv, pidfile),
		fmt.Sprintf("  - {name: cp-name, type: process, interval: %s, process: {name: tend-controlplane}}", iv),
		fmt.Sprintf("  - {name: true-cmd, type: command, interval: %s, command: {argv: [\"/bin/true\"]}}", iv),
		fmt.Sprintf("  - {name: var-disk, type: disk, interval: %s, disk: {path: /var, maxUsedPercent: 95}}", iv),
		fmt.Sprintf("  - {name: cp-port-2, type: tcp, interval: %s, tcp: {address: %q}}", iv, cpAddr),
	}
	var out []string
	for i := 0; i < n; i++ {
		c := all[i%len(all)]
		if i >= len(all) {
			c = strings.Replace(c, "{name: ", fmt.Sprintf("{name: c%d-", i), 1)
		}
		out = append(out, c)
	}
	return strings.Join(out, "\n")
}

// Footprint starts a control plane and one real tend-agent, lets it settle,
// then samples its RSS and CPU from /proc for the window.
func Footprint(ctx context.Context, cfg FootprintConfig) (*FootprintResult, error) {
	if cfg.Checks <= 0 {
		cfg.Checks = 10
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Minute
	}
	if cfg.Sample <= 0 {
		cfg.Sample = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "tend-footprint-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	spawn := cfg.Spawn
	spawn.DataDir = filepath.Join(dir, "controlplane")
	spawn.Perf = ""
	cp, err := SpawnControlPlane(ctx, spawn)
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	conf, err := cp.LoadAdmin()
	if err != nil {
		return nil, err
	}
	conn, err := conf.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	admin := adminv1.NewAdminServiceClient(conn)
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{Uses: 1, Description: "tend-bench footprint"})
	if err != nil {
		return nil, err
	}

	pidfile := filepath.Join(dir, "cp.pid")
	if err := os.WriteFile(pidfile, []byte(fmt.Sprint(cp.PID())), 0o644); err != nil {
		return nil, err
	}
	httpAddr := strings.TrimSuffix(strings.TrimPrefix(cp.MetricsURL, "http://"), "/metrics")
	yaml := fmt.Sprintf("server: %q\ndataDir: %q\nname: footprint-1\nlabels: {role: footprint}\n", cp.Addr, filepath.Join(dir, "agent"))
	if cfg.PluginDir != "" {
		yaml += fmt.Sprintf("pluginDir: %q\nactions:\n  exec.run:\n    commands: [[\"/bin/true\"]]\n", cfg.PluginDir)
	}
	yaml += "checks:\n" + footprintChecks(cfg.Checks, cfg.Interval, cp.Addr, httpAddr, pidfile) + "\n"
	cfgPath := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	argv := []string{cfg.AgentBin, "--config", cfgPath, "--token", tok.GetToken(), "--log-level", "warn"}
	perfData := ""
	if cfg.PerfRecord != "" && cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
		perfData = filepath.Join(cfg.ProfileDir, "agent.perf.data")
		argv = append([]string{cfg.PerfRecord, "record", "-g", "-F", "499", "-o", perfData, "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.AgentBin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	pid := cmd.Process.Pid
	if perfData != "" {
		pid = 0
		for deadline := time.Now().Add(10 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if kids := childPIDs(cmd.Process.Pid); len(kids) > 0 {
				pid = kids[0]
			}
		}
		if pid == 0 {
			_ = cmd.Process.Kill()
			<-done
			return nil, errors.New("perf did not start tend-agent")
		}
	}
	defer func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
	}()
	agentLog := func() string {
		b, _ := os.ReadFile(logf.Name())
		return string(b)
	}

	// Connected and results flowing.
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
		if err == nil && len(r.GetAgents()) == 1 && r.GetAgents()[0].GetStatus() == adminv1.AgentStatus_AGENT_STATUS_CONNECTED && r.GetAgents()[0].GetResultsStored() > 0 {
			break
		}
		select {
		case <-done:
			return nil, fmt.Errorf("tend-agent exited: %s", agentLog())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("tend-agent not connected within 60s: %s", agentLog())
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
	cfg.Log.Info("agent connected; settling", "warmup", cfg.Warmup)
	if err := sleepCtx(ctx, cfg.Warmup); err != nil {
		return nil, err
	}

	res := &FootprintResult{Checks: cfg.Checks, IntervalSeconds: cfg.Interval.Seconds()}
	cfg.Log.Info("measuring the agent", "pid", pid, "window", cfg.Duration)
	s0, err := ReadProc(pid)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var sum uint64
	var n uint64
	last := s0
	for time.Since(start) < cfg.Duration {
		if err := sleepCtx(ctx, min(cfg.Sample, cfg.Duration-time.Since(start))); err != nil {
			return nil, err
		}
		s, err := ReadProc(pid)
		if err != nil {
			return nil, fmt.Errorf("tend-agent: %w: %s", err, agentLog())
		}
		sum += s.RSS
		n++
		res.RSSMaxBytes = max(res.RSSMaxBytes, s.RSS)
		last = s
	}
	secs := last.At.Sub(s0.At).Seconds()
	if n > 0 {
		res.RSSAvgBytes = sum / n
	}
	res.WindowSeconds = secs
	res.RSSAnonBytes = last.RSSAnon
	res.Threads = last.Threads
	res.CPUPercent = 100 * (last.CPU - s0.CPU).Seconds() / secs
	res.CPUWithChildrenPercent = 100 * (last.CPU + last.ChildCPU - s0.CPU - s0.ChildCPU).Seconds() / secs
	for _, kid := range childPIDs(pid) {
		if s, err := ReadProc(kid); err == nil {
			res.PluginRSSBytes += s.RSS
			res.Plugins++
		}
	}
	if r, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{}); err == nil && len(r.GetAgents()) == 1 {
		res.ResultsStored = r.GetAgents()[0].GetResultsStored()
	}
	res.Mappings = residentByMapping(pid)
	res.Profile = perfData
	return res, nil
}

// WriteFootprint prints the agent footprint.
func WriteFootprint(w io.Writer, r *FootprintResult) {
	fmt.Fprintf(w, "tend-bench agent footprint: a real tend-agent, %d local checks every %gs, measured for %.0fs\n", r.Checks, r.IntervalSeconds, r.WindowSeconds)
	fmt.Fprintf(w, "T9  agent RSS      avg %s, max %s (anonymous %s, %d threads)   target <= 15 MB\n",
		kb(r.RSSAvgBytes), kb(r.RSSMaxBytes), kb(r.RSSAnonBytes), r.Threads)
	fmt.Fprintf(w, "T9  agent CPU      %.3f%% of a core (%.3f%% with the commands its checks run)   target <= 0.1%%\n",
		r.CPUPercent, r.CPUWithChildrenPercent)
	if r.Plugins > 0 {
		fmt.Fprintf(w, "    plugins        %d process(es), RSS %s (started at agent start for the allowed actions)\n", r.Plugins, kb(r.PluginRSSBytes))
	}
	fmt.Fprintf(w, "    results stored %d\n", r.ResultsStored)
	for i, m := range r.Mappings {
		if i == 5 {
			break
		}
		fmt.Fprintf(w, "    resident       %s %s\n", kb(m.RSS), m.Name)
	}
	if r.Profile != "" {
		fmt.Fprintf(w, "    profile        perf report -i %s --no-children --sort symbol\n", r.Profile)
	}
}

// Mapping is the resident memory of what one or more mappings map.
type Mapping struct {
	Name string `json:"name"`
	RSS  uint64 `json:"rssBytes"`
}

// residentByMapping sums /proc/PID/smaps's Rss by mapped file ("[anon]"
// for anonymous memory, heap and stacks included).
func residentByMapping(pid int) []Mapping {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	by := map[string]uint64{}
	name := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 {
			// A mapping header: range perms offset dev inode [path].
			name = "[anon]"
			if len(fields) >= 6 {
				name = fields[5]
				if strings.HasPrefix(name, "[") {
					name = "[anon]"
				}
			}
			continue
		}
		if fields[0] == "Rss:" && len(fields) >= 2 {
			n, _ := strconv.ParseUint(fields[1], 10, 64)
			by[name] += n << 10
		}
	}
	out := make([]Mapping, 0, len(by))
	for k, v := range by {
		out = append(out, Mapping{Name: k, RSS: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RSS > out[j].RSS })
	return out
}
