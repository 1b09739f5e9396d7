package e2e

import (
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/agent/state"
	"tend.dev/tend/agent/stream"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

const agentYAML = `
labels: {role: web}
checks:
  - name: true-cmd
    type: command
    interval: 1s
    command: {argv: ["/bin/true"]}
  - name: root-disk
    type: disk
    interval: 1s
    disk: {path: /, maxUsedPercent: 100}
`

// The control plane is stopped for 30 s while agents keep checking; after it
// is back every result taken during the outage is stored exactly once.
func TestControlPlaneOutageLosesNoResult(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s outage")
	}
	cp := startControlPlane(t, t.TempDir(), "", "--history-per-check", "100000")
	tok := cp.token(t, "--uses", "2")
	names := []string{"out-1", "out-2"}
	agents := map[string]*agentProc{}
	for _, n := range names {
		dir := t.TempDir()
		cfg := writeFile(t, dir, "agent.yaml", agentYAML)
		agents[n] = startAgent(t, cp, n, filepath.Join(dir, "data"), tok, "--config", cfg)
	}
	for _, n := range names {
		cp.waitAgentStatus(t, n, "connected", 20*time.Second)
	}
	admin := cp.admin(t)
	require.Eventually(t, func() bool {
		resp, err := admin.ListAgents(ctxTimeout(t, 5*time.Second), &adminv1.ListAgentsRequest{})
		if err != nil {
			return false
		}
		for _, a := range resp.GetAgents() {
			if a.GetResultsStored() < 4 {
				return false
			}
		}
		return len(resp.GetAgents()) == 2
	}, 20*time.Second, 200*time.Millisecond)

	outageStart := time.Now()
	cp.restart(t, 30*time.Second)
	outageEnd := time.Now()
	admin = cp.admin(t)
	for _, n := range names {
		cp.waitAgentStatus(t, n, "connected", 30*time.Second)
	}
	// Let the outboxes drain, then stop the agents to freeze their counts.
	time.Sleep(5 * time.Second)
	for _, n := range names {
		agents[n].stop(syscall.SIGTERM, 10*time.Second)
	}

	for _, n := range names {
		db, err := state.Open(filepath.Join(agents[n].dataDir, "agent.db"), state.Options{})
		require.NoError(t, err)
		pending, dropped, nextSeq := db.Stats()
		require.NoError(t, db.Close())
		require.Zero(t, dropped, "nothing may be dropped in this test")
		produced := nextSeq - 1

		ag := cp.agents(t)[n]
		var seqs []uint64
		inOutage := 0
		for _, check := range []string{"local/true-cmd", "local/root-disk"} {
			resp, err := admin.ListResults(ctxTimeout(t, 10*time.Second), &adminv1.ListResultsRequest{Agent: ag.ID, CheckId: check})
			require.NoError(t, err)
			for _, r := range resp.GetResults() {
				seqs = append(seqs, r.GetSeq())
				at := r.GetStartedAt().AsTime()
				if at.After(outageStart) && at.Before(outageEnd) {
					inOutage++
				}
			}
		}
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		for i, s := range seqs {
			require.Equal(t, uint64(i+1), s, "agent %s: stored seqs must be 1..N, each exactly once", n)
		}
		stored := uint64(len(seqs))
		t.Logf("agent %s: produced %d results, %d stored (%d taken during the %s outage), %d still in outbox after stop",
			n, produced, stored, inOutage, outageEnd.Sub(outageStart).Round(time.Second), pending)
		// Nothing is lost: every produced result is stored or still in the
		// outbox. A result can be both, when the agent stopped after the
		// control plane stored its batch and before the ack arrived (it is
		// sent again and skipped by seq): at most one batch window of them.
		require.LessOrEqual(t, produced, stored+pending, "every produced result is stored or still pending in the outbox")
		require.LessOrEqual(t, stored+pending, produced+uint64(stream.DefaultMaxInFlight*stream.DefaultBatchMax), "only results of unacknowledged batches may be both")
		require.GreaterOrEqual(t, inOutage, 40, "two 1s checks over a 30s outage should give ~60 results")

		resp, err := admin.ListAgents(ctxTimeout(t, 5*time.Second), &adminv1.ListAgentsRequest{})
		require.NoError(t, err)
		for _, a := range resp.GetAgents() {
			if a.GetName() == n {
				require.Equal(t, stored, a.GetResultsStored(), "the ingest counter counts each result once")
			}
		}
	}
}
