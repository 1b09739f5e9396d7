package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"tend.dev/tend/internal/adminconf"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

type demo struct {
	binDir   string
	examples string
	keep     bool
	out      io.Writer

	tmp    string
	procs  []*exec.Cmd
	start  time.Time
	tmpfs  bool     // spools are tmpfs mounts (needs root)
	mounts []string // to unmount at cleanup
	hosts  []*demoAgent
}

type demoAgent struct {
	name, zone, svcAddr, dir, pidfile, dataDir, spool string
}

func (d *demo) logf(format string, args ...any) {
	fmt.Fprintf(d.out, "[%6.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// spawn starts a binary with its output in a log file; it is stopped by pid
// at cleanup.
func (d *demo) spawn(name string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(d.tmp, "logs", name+".log"))
	if err != nil {
		return nil, err
	}
	bin := strings.Fields(name)[0]
	if i := strings.IndexByte(bin, '@'); i > 0 {
		bin = bin[:i]
	}
	cmd := exec.Command(filepath.Join(d.binDir, bin), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	d.procs = append(d.procs, cmd)
	go func() { _ = cmd.Wait(); logf.Close() }()
	return cmd, nil
}

func (d *demo) cleanup() {
	// Agents first, then services, then the control plane: reverse order.
	for i := len(d.procs) - 1; i >= 0; i-- {
		p := d.procs[i]
		if p.ProcessState != nil {
			continue
		}
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			for p.ProcessState == nil {
				if err := syscall.Kill(p.Process.Pid, 0); err != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
		}
	}
	d.stopServices()
	if d.keep {
		fmt.Fprintf(d.out, "demo: logs and data kept in %s\n", d.tmp)
		return
	}
	os.RemoveAll(d.tmp)
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s", url, timeout)
}

func (d *demo) run(ctx context.Context) int {
	d.start = time.Now()
	tmp, err := os.MkdirTemp("", "tend-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	d.tmp = tmp
	defer d.cleanup()
	if err := os.MkdirAll(filepath.Join(tmp, "logs"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	if err := d.steps(ctx); err != nil {
		fmt.Fprintf(d.out, "demo: FAILED: %v (logs in %s)\n", err, filepath.Join(tmp, "logs"))
		d.keep = true
		return 1
	}
	return 0
}

func (d *demo) steps(ctx context.Context) error {
	cpAddr, err := freePort()
	if err != nil {
		return err
	}
	httpAddr, err := freePort()
	if err != nil {
		return err
	}
	cpData := filepath.Join(d.tmp, "controlplane")
	d.logf("starting control plane on %s (data dir %s)", cpAddr, cpData)
	if _, err := d.spawn("tend-controlplane", "--data-dir", cpData, "--listen", cpAddr, "--http-listen", httpAddr); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+httpAddr+"/healthz", 20*time.Second); err != nil {
		return err
	}
	adminConf := filepath.Join(cpData, "admin.conf")
	d.logf("control plane ready; admin config at %s", adminConf)

	tok, err := d.tendctl(ctx, adminConf, "token", "create", "--uses", "3", "--ttl", "10m")
	if err != nil {
		return fmt.Errorf("token create: %w", err)
	}
	tok = strings.TrimSpace(tok)
	d.logf("join token created (3 uses, 10m): %s…", tok[:12])

	var agents []*demoAgent
	for i, zone := range []string{"a", "b", "c"} {
		a, err := d.startHost(ctx, i+1, zone, cpAddr, tok)
		if err != nil {
			return err
		}
		agents = append(agents, a)
	}

	files, _ := filepath.Glob(filepath.Join(d.examples, "demo-*.yaml"))
	if len(files) == 0 {
		return fmt.Errorf("no demo policies (demo-*.yaml) in %s", d.examples)
	}
	sort.Strings(files)
	for _, f := range files {
		out, err := d.tendctl(ctx, adminConf, "apply", "-f", f)
		if err != nil {
			return fmt.Errorf("apply %s: %w", f, err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			d.logf("tendctl apply -f %s: %s", f, line)
		}
	}

	client, closeFn, err := adminClient(adminConf)
	if err != nil {
		return err
	}
	defer closeFn()

	// Wait for a healthy fleet: every agent connected, every check ok.
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ar, err1 := client.ListAgents(cctx, &adminv1.ListAgentsRequest{})
		cr, err2 := client.ListChecks(cctx, &adminv1.ListChecksRequest{})
		cancel()
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if allOK(cr.GetChecks(), len(agents)) {
			d.render(ar.GetAgents(), cr.GetChecks())
			break
		}
		if time.Now().After(deadline) {
			d.render(ar.GetAgents(), cr.GetChecks())
			return errors.New("the fleet did not become healthy within 30s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}

	// Break things on purpose, one per host.
	fmt.Fprintln(d.out)
	injected := map[string]time.Time{}
	if err := d.killService(agents[0]); err != nil {
		return err
	}
	injected[agents[0].name] = time.Now()
	d.logf("FAILURE 1: killed %s's demo service with SIGKILL (pid from %s)", agents[0].name, agents[0].pidfile)
	if d.tmpfs {
		used, err := fillSpool(agents[1])
		if err != nil {
			return err
		}
		injected[agents[1].name] = time.Now()
		d.logf("FAILURE 2: filled %s's spool (a 4 MiB tmpfs) to %.0f%% with *.log files", agents[1].name, used)
	}
	if err := post(ctx, "http://"+agents[2].svcAddr+"/fail"); err != nil {
		return err
	}
	injected[agents[2].name] = time.Now()
	d.logf("FAILURE 3: made %s's health endpoint answer 503", agents[2].name)
	want := len(injected)

	// Follow the incidents until each is resolved or escalated.
	seen := map[string]string{}
	var incs []*adminv1.Incident
	deadline = time.Now().Add(90 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ir, err := client.ListIncidents(cctx, &adminv1.ListIncidentsRequest{})
		cancel()
		if err != nil {
			return err
		}
		incs = ir.GetIncidents()
		closed := 0
		for _, inc := range incs {
			if seen[inc.GetId()] != inc.GetState() {
				seen[inc.GetId()] = inc.GetState()
				d.logf("incident %s on %s (%s): %s — %s", inc.GetId(), inc.GetAgent(), inc.GetPolicy(), inc.GetState(), firstLine(inc.GetReason(), 110))
			}
			if inc.GetState() == "resolved" || inc.GetState() == "escalated" {
				closed++
			}
		}
		if len(incs) >= want && closed == len(incs) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d incidents closed after 90s", closed, len(incs))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}

	// The story of each incident, with latencies.
	sort.Slice(incs, func(i, j int) bool { return incs[i].GetOpenedAt().AsTime().Before(incs[j].GetOpenedAt().AsTime()) })
	resolved := 0
	var toStart []time.Duration
	for _, inc := range incs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		full, err := client.GetIncident(cctx, &adminv1.GetIncidentRequest{Id: inc.GetId()})
		cancel()
		if err != nil {
			return err
		}
		d.printTimeline(full.GetIncident(), injected[inc.GetAgent()], &toStart)
		if full.GetIncident().GetState() == "resolved" {
			resolved++
		}
	}
	fmt.Fprintln(d.out)
	if len(toStart) > 0 {
		sort.Slice(toStart, func(i, j int) bool { return toStart[i] < toStart[j] })
		fmt.Fprintf(d.out, "latency, trigger completed → task running on the agent: min %s, median %s, max %s (n=%d)\n",
			toStart[0].Round(100*time.Microsecond), toStart[len(toStart)/2].Round(100*time.Microsecond), toStart[len(toStart)-1].Round(100*time.Microsecond), len(toStart))
	}
	fmt.Fprintf(d.out, "demo: %d/%d incidents remediated and verified\n", resolved, len(incs))
	if resolved != len(incs) || len(incs) < want {
		return fmt.Errorf("%d of %d incidents were not remediated", len(incs)-resolved, len(incs))
	}
	return nil
}

// printTimeline prints one incident's timeline with offsets from the
// injected failure.
func (d *demo) printTimeline(inc *adminv1.Incident, injectedAt time.Time, toStart *[]time.Duration) {
	fmt.Fprintf(d.out, "\n── incident %s: %s on %s → %s ──\n", inc.GetId(), inc.GetPolicy(), inc.GetAgent(), strings.ToUpper(inc.GetState()))
	tw := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
	var detected time.Time
	for _, e := range inc.GetTimeline() {
		at := e.GetAt().AsTime()
		rel := ""
		if !injectedAt.IsZero() {
			rel = fmt.Sprintf("+%.3fs", at.Sub(injectedAt).Seconds())
		}
		switch e.GetKind() {
		case "detected":
			if detected.IsZero() {
				detected = at
			}
		case "started":
			if !detected.IsZero() {
				*toStart = append(*toStart, at.Sub(detected))
				detected = time.Time{}
			}
		}
		msg := e.GetMessage()
		if e.GetRule() != "" {
			msg = "[" + e.GetRule() + "] " + msg
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", rel, e.GetKind(), firstLine(msg, 120))
	}
	tw.Flush()
	if !injectedAt.IsZero() && inc.GetResolvedAt() != nil {
		fmt.Fprintf(d.out, "  failure → %s: %.2fs\n", inc.GetState(), inc.GetResolvedAt().AsTime().Sub(injectedAt).Seconds())
	}
}

func firstLine(s string, n int) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > n {
		s = s[:n-1] + "…"
	}
	return s
}

func (d *demo) tendctl(ctx context.Context, conf string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(d.binDir, "tendctl"), append([]string{"--config", conf}, args...)...)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	return string(out), nil
}

func adminClient(path string) (adminv1.AdminServiceClient, func(), error) {
	conf, err := adminconf.Load(path)
	if err != nil {
		return nil, nil, err
	}
	conn, err := conf.Dial()
	if err != nil {
		return nil, nil, err
	}
	return adminv1.NewAdminServiceClient(conn), func() { conn.Close() }, nil
}

func post(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func checkStatus(checks []*adminv1.CheckState, agent, check string) agentv1.CheckStatus {
	for _, c := range checks {
		if c.GetAgentName() == agent && c.GetCheckId() == check {
			return c.GetLast().GetStatus()
		}
	}
	return agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED
}

// allOK is true once every agent reports and every check is ok.
func allOK(checks []*adminv1.CheckState, agents int) bool {
	seen := map[string]bool{}
	for _, c := range checks {
		if c.GetLast().GetStatus() != agentv1.CheckStatus_CHECK_STATUS_OK {
			return false
		}
		seen[c.GetAgentName()] = true
	}
	return len(seen) == agents && len(checks) >= 4*agents
}

func statusWord(s agentv1.CheckStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CHECK_STATUS_"))
}

func (d *demo) render(agents []*adminv1.Agent, checks []*adminv1.CheckState) {
	fmt.Fprintf(d.out, "\n── fleet at %s ──\n", time.Now().Format("15:04:05"))
	tw := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tSTATUS\tLABELS\tLAST SEEN\tRESULTS STORED")
	for _, a := range agents {
		var labels []string
		for k, v := range a.GetLabels() {
			if strings.HasPrefix(k, "demo_") {
				continue // per-host addresses: long, and shown in the checks' output
			}
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\t%d\n", a.GetName(),
			strings.ToLower(strings.TrimPrefix(a.GetStatus().String(), "AGENT_STATUS_")),
			strings.Join(labels, ","), time.Since(a.GetLastSeen().AsTime()).Round(time.Second), a.GetResultsStored())
	}
	tw.Flush()
	sort.Slice(checks, func(i, j int) bool {
		if checks[i].GetAgentName() != checks[j].GetAgentName() {
			return checks[i].GetAgentName() < checks[j].GetAgentName()
		}
		return checks[i].GetCheckId() < checks[j].GetCheckId()
	})
	tw = tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tCHECK\tSTATUS\tFOR\tOUTPUT")
	for _, c := range checks {
		out := strings.TrimSpace(c.GetLast().GetOutput())
		if i := strings.IndexByte(out, '\n'); i >= 0 {
			out = out[:i]
		}
		if len(out) > 60 {
			out = out[:57] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.GetAgentName(), c.GetCheckId(), statusWord(c.GetLast().GetStatus()),
			time.Since(c.GetSince().AsTime()).Round(time.Second), out)
	}
	tw.Flush()
}
