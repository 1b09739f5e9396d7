package ingest

import (
	"context"
	"fmt"
	"slices"
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

// BenchmarkIngestSteady is a fleet at a steady rate, not flat out: 400
// agents each send one result every 200 ms (about 2,000 results/s, as
// tend-agents do whose checks run on their own jittered schedules), to a
// real bolt store with fsync. It compares commit pacing (the default
// MinInterval) with none: commits per second (2 fsyncs each) and the
// latency of a result to its commit. One op is one result.
func BenchmarkIngestSteady(b *testing.B) {
	for _, c := range []struct {
		name string
		min  time.Duration
	}{{"paced", 0}, {"unpaced", -1}} {
		b.Run(c.name, func(b *testing.B) {
			const agents, every = 400, 200 * time.Millisecond
			st := &countingStore{Store: boltStore(b, agents)}
			com := New(st, Options{MinInterval: c.min}, nil)
			com.Start()
			defer com.Stop()
			var (
				next atomic.Int64
				wg   sync.WaitGroup
				mu   sync.Mutex
				lat  []time.Duration
			)
			b.ResetTimer()
			start := time.Now()
			for i := range agents {
				id := fmt.Sprintf("a%d", i)
				wg.Go(func() {
					seq := uint64(1)
					// Spread the agents over the period.
					time.Sleep(every * time.Duration(i) / agents)
					tick := time.NewTicker(every)
					defer tick.Stop()
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						if _, err := com.Submit(context.Background(), benchBatch(id, seq, 1)); err != nil {
							b.Error(err)
							return
						}
						mu.Lock()
						lat = append(lat, time.Since(t0))
						mu.Unlock()
						seq++
						<-tick.C
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start).Seconds()
			b.StopTimer()
			commits := float64(st.calls.Load())
			sortDurations(lat)
			b.ReportMetric(float64(b.N)/elapsed, "results/s")
			b.ReportMetric(commits/elapsed, "commits/s")
			b.ReportMetric(float64(b.N)/commits, "results/commit")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

func sortDurations(d []time.Duration) {
	slices.Sort(d)
}
