package server

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/agent"
	"tend.dev/tend/agent/config"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// BenchmarkTriggerToTaskRunning measures, on loopback with real mTLS, real
// bbolt fsyncs and the real exec plugin, the latency from the failing
// result that completes a trigger reaching the control plane to the agent
// reporting the signed task running. Each iteration breaks the check (a
// pidfile disappears), waits for the task, and waits for the verified
// recovery. Checks run every second, so use -benchtime=Nx:
//
//	go test -run xxx -bench TriggerToTaskRunning -benchtime 50x ./controlplane/server/
func BenchmarkTriggerToTaskRunning(b *testing.B) {
	pluginDir := b.TempDir()
	build := exec.Command("go", "build", "-o", pluginDir+"/", "tend.dev/tend/plugins/exec/cmd/tend-plugin-exec")
	out, err := build.CombinedOutput()
	require.NoError(b, err, string(out))

	samples := make(chan time.Duration, 1024)
	s, admin := testServer(b, b.TempDir(), func(c *Config) {
		c.OnLatency = func(step string, d time.Duration) {
			if step == "trigger_to_task_running" {
				samples <- d
			}
		}
	})
	ctx := context.Background()
	tok, err := admin.CreateToken(ctx, &adminv1.CreateTokenRequest{Uses: 8})
	require.NoError(b, err)

	// Several agents take turns, so each check rests between failures:
	// one check failing every other second would be flapping, and Tend
	// rightly stops remediating a flapping check.
	const agents = 8
	src := filepath.Join(b.TempDir(), "me.pid")
	require.NoError(b, os.WriteFile(src, []byte(strconv.Itoa(os.Getpid())), 0o644))
	okfiles := make([]string, agents)
	for i := range okfiles {
		okfiles[i] = filepath.Join(b.TempDir(), "ok.pid")
		argv := []string{"/bin/cp", src, okfiles[i]}
		require.NoError(b, exec.Command(argv[0], argv[1:]...).Run())
		actx, acancel := context.WithCancel(ctx)
		a, err := agent.New(actx, agent.Config{
			Server: s.AdminAddr(), DataDir: b.TempDir(), Name: fmt.Sprintf("bench-%d", i),
			Labels: map[string]string{"bench": "yes", "okfile": okfiles[i]},
			Token:  tok.GetToken(), MaxBackoff: time.Second, Log: quiet, PluginDir: pluginDir,
			Actions: map[string]config.ActionRule{"exec.run": {Commands: [][]string{argv}}},
		})
		require.NoError(b, err)
		adone := make(chan struct{})
		go func() { _ = a.Run(actx); close(adone) }()
		b.Cleanup(func() { acancel(); <-adone })
	}

	policy := fmt.Sprintf(`apiVersion: tend.dev/v1
kind: Policy
metadata: {name: bench}
spec:
  selector: {matchLabels: {bench: "yes"}}
  check:
    type: process
    interval: 1s
    process: {pidfile: "{{ .labels.okfile }}"}
  trigger: {failures: 1, window: 1}
  remediation:
    action: exec.run
    params: {argv: ["/bin/cp", %q, "{{ .labels.okfile }}"]}
    verify: {within: 10s}
    maxAttempts: 3
    backoff: 1s
    cooldown: 0s
`, src)
	_, err = admin.ApplyPolicies(ctx, &adminv1.ApplyPoliciesRequest{Filename: "bench.yaml", Content: []byte(policy)})
	require.NoError(b, err)
	openIncidents := func() int {
		r, err := admin.ListIncidents(ctx, &adminv1.ListIncidentsRequest{OpenOnly: true})
		require.NoError(b, err)
		return len(r.GetIncidents())
	}
	// Healthy first: the check passes on the agent.
	time.Sleep(3 * time.Second)

	var got []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		require.NoError(b, os.Remove(okfiles[i%agents]))
		select {
		case d := <-samples:
			got = append(got, d)
		case <-time.After(30 * time.Second):
			b.Fatalf("iteration %d: no task ran within 30s", i)
		}
		deadline := time.Now().Add(30 * time.Second)
		for openIncidents() > 0 {
			if time.Now().After(deadline) {
				b.Fatalf("iteration %d: incident not resolved within 30s", i)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	b.StopTimer()
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	pct := func(p float64) float64 {
		return float64(got[int(float64(len(got)-1)*p)].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(got[len(got)-1].Microseconds())/1000, "max-ms")
}
