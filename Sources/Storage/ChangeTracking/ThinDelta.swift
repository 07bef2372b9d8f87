import Foundation

/// Reads `thin_delta` output (thin-provisioning-tools): the block ranges in
/// which two thin devices of a pool differ, in units of the pool's data
/// block size (`data_block_size`, in 512-byte sectors, on `<superblock>`):
///
///     <superblock uuid="" time="2" transaction="4" data_block_size="128" nr_data_blocks="3072">
///       <diff left="1" right="3">
///         <same begin="0" length="16"/>
///         <different begin="16" length="1"/>
///         <right_only begin="17" length="2"/>
///       </diff>
///     </superblock>
///
/// Everything but `same` differs (a block mapped on one side only reads as
/// zeros on the other: `left_only` blocks are zeros in the new snapshot);
/// blocks listed nowhere are unmapped in both.
public enum ThinDelta {
    public static func changes(xml: String, into result: inout ChangedChunks) -> ChangeTracking {
        var blockBytes: UInt64?
        var sawDiff = false
        for raw in xml.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            func attribute(_ name: String) -> UInt64? {
                guard let r = line.range(of: " \(name)=\"") else { return nil }
                return UInt64(line[r.upperBound...].prefix { $0 != "\"" })
            }
            if line.hasPrefix("<superblock") {
                guard let sectors = attribute("data_block_size"), sectors > 0 else {
                    return .unknown(reason: "thin_delta: no data_block_size in '\(line)'")
                }
                blockBytes = sectors * 512
            } else if line.hasPrefix("<diff ") || line.hasPrefix("<diff>") {
                // Not hasPrefix("<diff"): that would swallow every <different …/> line.
                sawDiff = true
            } else if line.hasPrefix("<same") || line.hasPrefix("</") {
                continue
            } else if line.hasPrefix("<different") || line.hasPrefix("<left_only") || line.hasPrefix("<right_only") {
                guard let size = blockBytes, let begin = attribute("begin"), let length = attribute("length") else {
                    return .unknown(reason: "thin_delta: cannot read '\(line)'")
                }
                // left_only: mapped in the base only, unmapped (zeros) in the new snapshot.
                result.insert(offset: begin * size, length: length * size, kind: line.hasPrefix("<left_only") ? .zero : .data)
            } else if !line.isEmpty {
                return .unknown(reason: "thin_delta: unexpected '\(line)'")
            }
        }
        guard sawDiff else { return .unknown(reason: "thin_delta printed no <diff>") }
        return .changed(result)
    }
}
