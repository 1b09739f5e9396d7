package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metrics is one scrape of a Prometheus text endpoint: sample values by
// series as written ("name" or "name{labels}").
type Metrics map[string]float64

// Get returns the value of a series without labels.
func (m Metrics) Get(name string) float64 { return m[name] }

// Sum adds up every series of a metric, whatever its labels.
func (m Metrics) Sum(name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || (strings.HasPrefix(k, name+"{")) {
			s += v
		}
	}
	return s
}

// Scrape fetches and parses a /metrics page.
func Scrape(ctx context.Context, url string) (Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	m := Metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// "series value [timestamp]"; label values never hold '}' in
		// Tend's metrics.
		var series, rest string
		if i := strings.IndexByte(line, '}'); i >= 0 {
			series, rest = line[:i+1], line[i+1:]
		} else {
			series, rest, _ = strings.Cut(line, " ")
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		val := f[0]
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		m[series] = v
	}
	return m, sc.Err()
}
