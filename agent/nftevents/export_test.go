package nftevents

// MessageKinds is messageKinds, for the table test.
var MessageKinds = messageKinds
