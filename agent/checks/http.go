package checks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// The http check: GET a URL and compare the status code.
//
// Redirects are followed as Go's default client does (at most 10), all
// within the run's timeout. Each checker has its own transport with
// keep-alives off, so a check never holds idle connections open between
// runs, and no proxy: a health check talks to its target directly, whatever
// HTTP_PROXY the agent was started with. At most MaxOutput bytes of the body
// are read, and they are quoted in the output of a failed check.

func init() { Register("http", newHTTPCheck) }

const defaultExpectStatus = 200

type httpCheck struct {
	url      string
	redacted string // for output: no password
	expect   int
	client   *http.Client
}

func newHTTPCheck(spec *agentv1.CheckSpec) (Checker, error) {
	h := spec.GetHttp()
	raw := h.GetUrl()
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("http check: url %s does not parse: %v", quote(raw), err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("http check: url %s must start with http:// or https://", quote(u.Redacted()))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("http check: url %s has no host", quote(u.Redacted()))
	}
	expect := int(h.GetExpectStatus())
	if expect == 0 {
		expect = defaultExpectStatus
	}
	if expect < 100 || expect > 599 {
		return nil, fmt.Errorf("http check: expect_status %d must be an HTTP status code from 100 to 599 (0 means 200)", h.GetExpectStatus())
	}
	tr := &http.Transport{
		Proxy:               nil,
		DisableKeepAlives:   true,
		MaxIdleConnsPerHost: -1,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &httpCheck{
		url:      raw,
		redacted: u.Redacted(),
		expect:   expect,
		client:   &http.Client{Transport: tr},
	}, nil
}

func (c *httpCheck) Check(ctx context.Context) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return result(statusUnknown, nil, "GET %s: cannot build the request: %v", c.redacted, err)
	}
	req.Header.Set("User-Agent", "tend-agent")
	start := time.Now()
	resp, err := c.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return result(statusCritical, nil, "GET %s timed out after %v", c.redacted, timeoutOf(ctx, start))
		}
		return result(statusCritical, nil, "GET %s failed: %v", c.redacted, redactURLError(err))
	}
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, MaxOutput))
	_ = resp.Body.Close()
	took := time.Since(start)
	metrics := map[string]float64{
		"response_seconds": took.Seconds(),
		"status_code":      float64(resp.StatusCode),
	}
	if resp.StatusCode != c.expect {
		msg := fmt.Sprintf("GET %s: HTTP %s, expected %d (in %v)", c.redacted, resp.Status, c.expect, took.Round(time.Microsecond))
		if b := strings.TrimSpace(cleanText(body)); b != "" {
			msg += "\n" + b
		}
		return result(statusCritical, metrics, "%s", msg)
	}
	if readErr != nil && !errors.Is(readErr, io.EOF) {
		return result(statusCritical, metrics, "GET %s: HTTP %s but reading the body failed: %v", c.redacted, resp.Status, readErr)
	}
	return result(statusOK, metrics, "GET %s: HTTP %s in %v", c.redacted, resp.Status, took.Round(time.Microsecond))
}

// redactURLError removes a password from the URL a *url.Error carries.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			ue.URL = u.Redacted()
		}
	}
	return err
}
