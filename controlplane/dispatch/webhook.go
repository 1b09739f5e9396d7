// Package dispatch delivers what the control plane decides: signed tasks to
// agents, and escalations to webhooks.
package dispatch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// WebhookJob is one escalation to deliver.
type WebhookJob struct {
	URL     string
	Payload []byte // JSON
	// Done, if set, is called once with the outcome (nil: delivered).
	Done func(err error)
}

// Webhook posts escalations with retries on a worker goroutine, so that a
// slow or dead receiver never blocks the remediation loop.
type Webhook struct {
	Client   *http.Client
	Attempts int           // default 5
	Backoff  time.Duration // first retry delay, doubling; default 1s
	log      *slog.Logger
	queue    chan WebhookJob
	stop     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
}

// NewWebhook returns a started sender with a bounded queue.
func NewWebhook(log *slog.Logger) *Webhook {
	if log == nil {
		log = slog.Default()
	}
	w := &Webhook{
		Client:   &http.Client{Timeout: 5 * time.Second},
		Attempts: 5,
		Backoff:  time.Second,
		log:      log,
		queue:    make(chan WebhookJob, 1024),
		stop:     make(chan struct{}),
	}
	w.wg.Add(2)
	for i := 0; i < 2; i++ {
		go w.worker()
	}
	return w
}

// Send queues a job; it never blocks. A full queue fails the job at once.
func (w *Webhook) Send(j WebhookJob) {
	select {
	case w.queue <- j:
	default:
		err := fmt.Errorf("escalation queue full (%d jobs): webhook %s not called", cap(w.queue), j.URL)
		w.log.Error("webhook dropped", "url", j.URL, "err", err)
		if j.Done != nil {
			j.Done(err)
		}
	}
}

// Stop stops the workers; queued jobs not yet started are abandoned.
func (w *Webhook) Stop() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}

func (w *Webhook) worker() {
	defer w.wg.Done()
	for {
		select {
		case <-w.stop:
			return
		case j := <-w.queue:
			err := w.deliver(j)
			if j.Done != nil {
				j.Done(err)
			}
		}
	}
}

func (w *Webhook) deliver(j WebhookJob) error {
	delay := w.Backoff
	var last error
	for attempt := 1; attempt <= w.Attempts; attempt++ {
		last = w.post(j)
		if last == nil {
			return nil
		}
		w.log.Warn("webhook attempt failed", "url", j.URL, "attempt", attempt, "err", last)
		if attempt == w.Attempts {
			break
		}
		select {
		case <-w.stop:
			return fmt.Errorf("stopped before delivery: %w", last)
		case <-time.After(delay):
		}
		delay *= 2
	}
	return fmt.Errorf("webhook %s failed after %d attempts: %w", j.URL, w.Attempts, last)
}

func (w *Webhook) post(j WebhookJob) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.Client.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.URL, bytes.NewReader(j.Payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tend-controlplane")
	resp, err := w.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}
