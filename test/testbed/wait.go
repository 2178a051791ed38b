package testbed

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// Eventually calls f until it returns nil and returns how long that took; the test fails, with
// f's last error, when it has not within timeout.
func Eventually(tb testing.TB, timeout time.Duration, what string, f func() error) time.Duration {
	tb.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = f(); err == nil {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("%s: not within %s: %v", what, timeout, err)
	return 0
}

// HTTPGet GETs url (5 s at most) and returns the status code and the body.
func HTTPGet(url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
