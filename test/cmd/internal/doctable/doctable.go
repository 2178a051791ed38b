// Package doctable rewrites a generated table inside a Markdown document: the part between a
// begin and an end marker (HTML comments), so the prose around it stays hand-written.
package doctable

import (
	"fmt"
	"strings"
)

// Replace puts table between the doc's begin and end markers, replacing what was there.
func Replace(doc []byte, begin, end, table string) ([]byte, error) {
	s := string(doc)
	i := strings.Index(s, begin)
	j := strings.Index(s, end)
	if i < 0 || j < i {
		return nil, fmt.Errorf("no %s … %s in the doc", begin, end)
	}
	return []byte(s[:i+len(begin)] + "\n" + table + s[j:]), nil
}
