package checks

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func TestHTTPFactoryValidation(t *testing.T) {
	tests := []struct {
		url     string
		expect  int32
		wantErr string
	}{
		{"", 0, "must start with http:// or https://"},
		{"ftp://127.0.0.1/", 0, "must start with http://"},
		{"http://", 0, "has no host"},
		{"http://127.0.0.1/\x7f", 0, "does not parse"},
		{"http://127.0.0.1/", 42, "expect_status 42"},
		{"http://127.0.0.1/", 600, "expect_status 600"},
		{"ftp://user:secret@127.0.0.1:8080/x", 0, "ftp://user:xxxxx@127.0.0.1:8080/x"},
		{"http://127.0.0.1:8080/healthz", 0, ""},
		{"https://127.0.0.1/", 204, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.url, tt.expect), func(t *testing.T) {
			_, err := New(httpSpec(tt.url, tt.expect))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.NotContains(t, err.Error(), "secret")
		})
	}
}

func TestHTTP(t *testing.T) {
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "fine") })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "database \x1b down", http.StatusInternalServerError)
	})
	mux.HandleFunc("/created", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, strings.Repeat("y", 1<<20))
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	srv := httptest.NewServer(mux) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	tests := []struct {
		name    string
		path    string
		expect  int32
		timeout time.Duration
		status  agentv1.CheckStatus
		code    float64
		output  []string
	}{
		{"200", "/ok", 0, 2 * time.Second, statusOK, 200, []string{"HTTP 200 OK"}},
		{"500", "/fail", 0, 2 * time.Second, statusCritical, 500, []string{"HTTP 500 Internal Server Error, expected 200", `database \x1b down`}},
		{"expect 201", "/created", 201, 2 * time.Second, statusOK, 201, []string{"HTTP 201 Created"}},
		{"201 but expect 200", "/created", 0, 2 * time.Second, statusCritical, 201, []string{"expected 200"}},
		{"redirect followed", "/redirect", 0, 2 * time.Second, statusOK, 200, []string{"HTTP 200 OK"}},
		{"big body capped", "/big", 0, 2 * time.Second, statusCritical, 503, []string{"HTTP 503"}},
		{"slow", "/slow", 0, 200 * time.Millisecond, statusCritical, 0, []string{"timed out after 200ms"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := srv.URL + tt.path
			start := time.Now()
			res := run(t, mustNew(t, httpSpec(url, tt.expect)), tt.timeout)
			require.Less(t, time.Since(start), tt.timeout+time.Second)
			require.Equal(t, tt.status, res.Status, res.Output)
			require.Contains(t, res.Output, url)
			for _, want := range tt.output {
				require.Contains(t, res.Output, want)
			}
			require.LessOrEqual(t, len(res.Output), MaxOutput)
			require.NotContains(t, res.Output, "\x1b")
			if tt.code != 0 {
				require.Equal(t, tt.code, res.Metrics["status_code"])
				require.Contains(t, res.Metrics, "response_seconds")
			}
		})
	}
}

func TestHTTPRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/"
	srv.Close()
	res := run(t, mustNew(t, httpSpec(url, 0)), 2*time.Second)
	require.Equal(t, statusCritical, res.Status, res.Output)
	require.Contains(t, res.Output, "GET "+url+" failed")
}

// TestHTTPNoKeepAlive: every run opens its own connection and closes it,
// so the checker holds nothing open between runs.
func TestHTTPNoKeepAlive(t *testing.T) {
	var opened, closed atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := mustNew(t, httpSpec(srv.URL, 0))
	for range 3 {
		res := run(t, c, 2*time.Second)
		require.Equal(t, statusOK, res.Status, res.Output)
	}
	require.Eventually(t, func() bool {
		return opened.Load() == 3 && closed.Load() == 3
	}, 2*time.Second, 10*time.Millisecond)
}
