package bolt

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// BenchmarkCommitResults: one op is one CommitResults call (one fsync) of
// size results, in batches of up to 10 results from different agents.
func BenchmarkCommitResults(b *testing.B) {
	const agents = 1000
	for _, size := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("results=%d", size), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "tend.db")
			s, err := Open(path, Options{NoSync: true})
			require.NoError(b, err)
			ids := make([]string, agents)
			for i := range ids {
				ids[i] = fmt.Sprintf("agent-%04d", i)
				enroll(b, s, ids[i], "host-"+ids[i])
			}
			require.NoError(b, s.Close())
			s = testStoreAt(b, path, Options{})

			seq := make([]uint64, agents)
			next := 0
			now := timestamppb.Now()
			build := func() []store.ResultBatch {
				var bs []store.ResultBatch
				for left := size; left > 0; left -= 10 {
					a := next % agents
					next++
					bt := store.ResultBatch{AgentID: ids[a]}
					for range min(left, 10) {
						seq[a]++
						bt.Results = append(bt.Results, benchOKResult(seq[a], fmt.Sprintf("policy-%d", seq[a]%5), now))
					}
					bs = append(bs, bt)
				}
				return bs
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				bs := build()
				if _, err := s.CommitResults(bs); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start).Seconds()
			b.StopTimer()
			b.ReportMetric(float64(b.N*size)/elapsed, "results/s")
		})
	}
}

// BenchmarkCreateTask: one op is one CreateTask (one transaction, one fsync
// unless nosync) with a trivial seal, round-robin over 100 agents that each
// have an open incident.
func BenchmarkCreateTask(b *testing.B) {
	const agents = 100
	for _, mode := range []struct {
		name   string
		noSync bool
	}{{"fsync", false}, {"nosync", true}} {
		b.Run(mode.name, func(b *testing.B) {
			s := testStore(b, Options{NoSync: mode.noSync})
			ids := make([]string, agents)
			for i := range ids {
				ids[i] = fmt.Sprintf("agent-%04d", i)
				require.NoError(b, s.CreateIncident(incident("inc-"+ids[i], ids[i], "web", t0)))
			}
			now := time.Now()
			b.ResetTimer()
			for i := range b.N {
				a := ids[i%agents]
				if _, err := s.CreateTask(task(fmt.Sprintf("task-%d", i), "inc-"+a, a, now), seal); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCommitResultsFleet: the shape of tend-bench's fleet (agents x 10
// checks, one batch of 10 results per agent), without fsync so that it
// measures CPU and pages written, not the disk: one op is one
// CommitResults of 1,000 results, from 100 agents in turn. Before timing,
// every check gets warm results: one round for agents=2000; for
// agents=200/full, 150 rounds, so that histories are full (100 per check)
// and old results are being trimmed, the steady state of a long run.
// Reports pages written per result.
func BenchmarkCommitResultsFleet(b *testing.B) {
	for _, tt := range []struct {
		name         string
		agents, warm int
	}{{"agents=2000", 2000, 1}, {"agents=200/full", 200, 150}} {
		b.Run(tt.name, func(b *testing.B) { benchFleet(b, tt.agents, tt.warm) })
	}
}

func benchFleet(b *testing.B, agents, warm int) {
	const checks, size = 10, 1000
	path := filepath.Join(b.TempDir(), "tend.db")
	s, err := Open(path, Options{NoSync: true})
	require.NoError(b, err)
	b.Cleanup(func() { _ = s.Close() })
	ids := make([]string, agents)
	for i := range ids {
		ids[i] = fmt.Sprintf("agent-%04d", i)
		enroll(b, s, ids[i], "host-"+ids[i])
	}
	seq := make([]uint64, agents)
	next := 0
	now := timestamppb.Now()
	build := func() []store.ResultBatch {
		var bs []store.ResultBatch
		for range size / checks {
			a := next % agents
			next++
			bt := store.ResultBatch{AgentID: ids[a]}
			for c := range checks {
				seq[a]++
				bt.Results = append(bt.Results, benchOKResult(seq[a], fmt.Sprintf("policy-%d", c), now))
			}
			bs = append(bs, bt)
		}
		return bs
	}
	for range warm * agents * checks / size {
		_, err := s.CommitResults(build())
		require.NoError(b, err)
	}
	before := s.db.Stats().TxStats
	b.ResetTimer()
	for range b.N {
		if _, err := s.CommitResults(build()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after := s.db.Stats().TxStats
	b.ReportMetric(float64(after.GetWrite()-before.GetWrite())/float64(b.N*size), "pagewrites/result")
}

// benchOKResult is a passing result the size of a typical HTTP check's.
func benchOKResult(seq uint64, checkID string, now *timestamppb.Timestamp) *agentv1.CheckResult {
	return &agentv1.CheckResult{
		Seq: seq, CheckId: checkID, PolicyVersion: 3,
		Status:    agentv1.CheckStatus_CHECK_STATUS_OK,
		Output:    "HTTP 200 from http://127.0.0.1:8080/healthz in 1.2ms",
		Metrics:   map[string]float64{"used_percent": 41.5, "free_bytes": 1 << 30},
		StartedAt: now, Duration: durationpb.New(1200 * time.Microsecond),
	}
}
