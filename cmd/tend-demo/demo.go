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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"tend.dev/tend/internal/adminconf"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

type demo struct {
	binDir   string
	examples string
	watch    time.Duration
	keep     bool
	out      io.Writer

	tmp   string
	procs []*exec.Cmd
	start time.Time
}

type demoAgent struct {
	name, zone, svcAddr, dir, pidfile, dataDir string
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

	zones := []string{"a", "b", "c"}
	var agents []demoAgent
	for i, zone := range zones {
		addr, err := freePort()
		if err != nil {
			return err
		}
		// Each demo "host" has its own directory: the service's pidfile and
		// a spool area the disk policy watches.
		dir := filepath.Join(d.tmp, fmt.Sprintf("host-%d", i+1))
		a := demoAgent{
			name:    fmt.Sprintf("demo-%d", i+1),
			zone:    zone,
			svcAddr: addr,
			dir:     dir,
			pidfile: filepath.Join(dir, "service.pid"),
			dataDir: filepath.Join(dir, "agent-data"),
		}
		if err := os.MkdirAll(filepath.Join(dir, "spool"), 0o755); err != nil {
			return err
		}
		if _, err := d.spawn("tend-demo-service@"+a.name, "--listen", addr, "--pidfile", a.pidfile, "--name", a.name); err != nil {
			return err
		}
		if err := waitHTTP(ctx, "http://"+addr+"/healthz", 10*time.Second); err != nil {
			return err
		}
		if err := os.MkdirAll(a.dataDir, 0o700); err != nil {
			return err
		}
		cfg := filepath.Join(a.dataDir, "agent.yaml")
		if err := os.WriteFile(cfg, []byte(agentYAML(a)), 0o644); err != nil {
			return err
		}
		labels := fmt.Sprintf("role=web,zone=%s,app=demo,demo_addr=%s,demo_dir=%s", a.zone, a.svcAddr, a.dir)
		if _, err := d.spawn("tend-agent@"+a.name, "--server", cpAddr, "--token", tok, "--config", cfg,
			"--data-dir", a.dataDir, "--name", a.name, "--labels", labels); err != nil {
			return err
		}
		d.logf("agent %s (role=web, zone=%s) started, watching demo service %s", a.name, zone, addr)
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

	// The live view. Midway, the demo breaks demo-2's health endpoint on
	// purpose and shows Tend detect it, then repairs it by hand (automatic
	// remediation arrives with the remediation work).
	victim := agents[len(agents)/2]
	end := time.Now().Add(d.watch)
	var lastAgents []*adminv1.Agent
	var lastChecks []*adminv1.CheckState
	var failedAt, detectedAt, recoveredAt, rendered time.Time
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ar, err1 := client.ListAgents(cctx, &adminv1.ListAgentsRequest{})
		cr, err2 := client.ListChecks(cctx, &adminv1.ListChecksRequest{})
		cancel()
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		lastAgents, lastChecks = ar.GetAgents(), cr.GetChecks()
		if time.Since(rendered) >= 3*time.Second {
			d.render(lastAgents, lastChecks)
			rendered = time.Now()
		}
		httpState := checkStatus(lastChecks, victim.name, "demo-http")
		switch {
		case failedAt.IsZero() && allOK(lastChecks, len(agents)):
			if err := post(ctx, "http://"+victim.svcAddr+"/fail"); err != nil {
				return err
			}
			failedAt = time.Now()
			d.logf("breaking %s on purpose: its health endpoint now answers 503", victim.name)
		case !failedAt.IsZero() && detectedAt.IsZero() && httpState == agentv1.CheckStatus_CHECK_STATUS_CRITICAL:
			detectedAt = time.Now()
			d.logf("detected: %s/demo-http is critical, %.1fs after the failure", victim.name, detectedAt.Sub(failedAt).Seconds())
			if err := post(ctx, "http://"+victim.svcAddr+"/recover"); err != nil {
				return err
			}
			d.logf("repaired %s by hand (automatic remediation comes with the remediation work)", victim.name)
		case !detectedAt.IsZero() && recoveredAt.IsZero() && httpState == agentv1.CheckStatus_CHECK_STATUS_OK:
			recoveredAt = time.Now()
			d.logf("recovered: %s/demo-http is ok again, %.1fs after the repair", victim.name, recoveredAt.Sub(detectedAt).Seconds())
		}
		if !recoveredAt.IsZero() && time.Now().After(end) {
			break
		}
		if time.Now().After(end.Add(30 * time.Second)) {
			return fmt.Errorf("the injected failure was not detected and recovered in time")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	d.render(lastAgents, lastChecks)

	connected := 0
	for _, a := range lastAgents {
		if a.GetStatus() == adminv1.AgentStatus_AGENT_STATUS_CONNECTED {
			connected++
		}
	}
	reporting := map[string]bool{}
	ok := 0
	for _, c := range lastChecks {
		reporting[c.GetAgentName()] = true
		if c.GetLast().GetStatus() == agentv1.CheckStatus_CHECK_STATUS_OK {
			ok++
		}
	}
	fmt.Fprintf(d.out, "demo: %d/%d agents connected and reporting, %d/%d checks ok, injected failure detected in %.1fs\n",
		connected, len(agents), ok, len(lastChecks), detectedAt.Sub(failedAt).Seconds())
	if connected != len(agents) || len(reporting) != len(agents) || ok != len(lastChecks) {
		return fmt.Errorf("%d of %d agents connected, %d reporting", connected, len(agents), len(reporting))
	}
	return nil
}

// agentYAML is each demo host's own agent.yaml: one local check, which runs
// whatever the control plane assigns.
func agentYAML(a demoAgent) string {
	return `# written by tend-demo
checks:
  - name: root-disk
    type: disk
    interval: 5s
    disk: {path: /, maxUsedPercent: 99}
`
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
	tc, err := conf.TLSConfig()
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(conf.Server, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
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
