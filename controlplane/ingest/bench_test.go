package ingest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/store"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// countingStore counts CommitResults calls and nothing else.
type countingStore struct {
	store.Store
	calls atomic.Int64
}

func (s *countingStore) CommitResults(bs []store.ResultBatch) ([]store.CommitOutcome, error) {
	s.calls.Add(1)
	return s.Store.CommitResults(bs)
}

// benchBatch is a batch of n realistic results: a few checks, short output,
// two metrics, timestamps.
func benchBatch(agent string, from uint64, n int) store.ResultBatch {
	b := store.ResultBatch{AgentID: agent, Results: make([]*agentv1.CheckResult, n)}
	now := timestamppb.Now()
	for i := range n {
		seq := from + uint64(i)
		b.Results[i] = &agentv1.CheckResult{
			Seq:           seq,
			CheckId:       fmt.Sprintf("policy-%d", seq%5),
			PolicyVersion: 3,
			Status:        agentv1.CheckStatus_CHECK_STATUS_OK,
			Output:        "HTTP 200 from http://127.0.0.1:8080/healthz in 1.2ms",
			Metrics:       map[string]float64{"used_percent": 41.5, "free_bytes": 1 << 30},
			StartedAt:     now,
			Duration:      durationpb.New(1200 * time.Microsecond),
		}
	}
	return b
}

// BenchmarkIngest: 1000 agents submit batches of 10 results concurrently
// through the committer to a real bolt store with fsync. One op is one
// batch.
func BenchmarkIngest(b *testing.B) {
	const agents, per = 1000, 10
	st := &countingStore{Store: boltStore(b, agents)}
	c := New(st, Options{}, nil)
	c.Start()
	defer c.Stop()

	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i := range agents {
		id := fmt.Sprintf("a%d", i)
		wg.Go(func() {
			seq := uint64(1)
			for next.Add(1) <= int64(b.N) {
				if _, err := c.Submit(context.Background(), benchBatch(id, seq, per)); err != nil {
					b.Error(err)
					return
				}
				seq += per
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	b.StopTimer()
	results, commits := float64(b.N*per), float64(st.calls.Load())
	b.ReportMetric(results/elapsed, "results/s")
	b.ReportMetric(commits/elapsed, "commits/s")
	b.ReportMetric(results/commits, "results/commit")
}
