package containerd

// MemoSizes is how many records and statuses the discovery memo holds (tests).
func MemoSizes(r *Runtime) (records, statuses int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.memo.records), len(r.memo.statuses)
}
