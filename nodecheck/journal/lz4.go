package journal

import "errors"

// lz4Block decodes an LZ4 block (the format systemd uses for LZ4-compressed fields), producing at
// most limit bytes.
func lz4Block(src []byte, limit int) ([]byte, bool, error) {
	dst := make([]byte, 0, min(limit, 4*len(src)+64))
	i := 0
	for i < len(src) {
		token := src[i]
		i++
		lit := int(token >> 4)
		if lit == 15 {
			for {
				if i >= len(src) {
					return nil, false, errors.New("lz4: truncated literal length")
				}
				b := src[i]
				i++
				lit += int(b)
				if b != 255 {
					break
				}
			}
		}
		if lit > len(src)-i {
			return nil, false, errors.New("lz4: literal overruns input")
		}
		if len(dst)+lit > limit {
			dst = append(dst, src[i:i+limit-len(dst)]...)
			return dst, true, nil
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			return dst, false, nil // the last sequence has literals only
		}
		if i+2 > len(src) {
			return nil, false, errors.New("lz4: truncated offset")
		}
		offset := int(src[i]) | int(src[i+1])<<8
		i += 2
		if offset == 0 || offset > len(dst) {
			return nil, false, errors.New("lz4: bad match offset")
		}
		ml := int(token & 15)
		if ml == 15 {
			for {
				if i >= len(src) {
					return nil, false, errors.New("lz4: truncated match length")
				}
				b := src[i]
				i++
				ml += int(b)
				if b != 255 {
					break
				}
			}
		}
		ml += 4
		for k := 0; k < ml; k++ {
			if len(dst) >= limit {
				return dst, true, nil
			}
			dst = append(dst, dst[len(dst)-offset])
		}
	}
	return dst, false, nil
}
