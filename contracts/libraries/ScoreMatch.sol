// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {LibBit} from "solady/utils/LibBit.sol";

/// @title Comparison of task result scores
/// @notice Image scores are the concatenated 64-bit DCT pHashes of the images (8 bytes each):
///         two image scores match when they have the same length and every pair of 8-byte
///         pHashes differs in at most `threshold` bits (XOR, then popcount). Text scores
///         (32-byte SHA-256) and error scores (empty) match when they are equal.
/// @dev Scores are held as up to three 32-byte words (at most MAX_LENGTH bytes, enough for ten
///      pHashes), left-aligned, with the bytes past the length zeroed.
library ScoreMatch {
    /// @notice Longest score kept (bytes).
    uint256 internal constant MAX_LENGTH = 96;

    /// @notice True when the scores `a` (length lenA) and `b` (length lenB) match.
    /// @param image True for an image task (per-pHash Hamming comparison).
    /// @param threshold The largest Hamming distance allowed per 8-byte pHash.
    function matches(bytes32[3] memory a, uint256 lenA, bytes32[3] memory b, uint256 lenB, bool image, uint256 threshold)
        internal
        pure
        returns (bool)
    {
        if (lenA != lenB) return false;
        if (!image || lenA % 8 != 0) return a[0] == b[0] && a[1] == b[1] && a[2] == b[2];
        for (uint256 c = 0; c < lenA / 8; ++c) {
            uint256 shift = 192 - 64 * (c % 4);
            uint256 x = (uint256(a[c / 4]) >> shift) & type(uint64).max;
            uint256 y = (uint256(b[c / 4]) >> shift) & type(uint64).max;
            if (LibBit.popCount(x ^ y) > threshold) return false;
        }
        return true;
    }

    /// @notice Word `w` of a calldata score, with the bytes past its end zeroed.
    function word(bytes calldata score, uint256 w) internal pure returns (bytes32 v) {
        uint256 start = w * 32;
        uint256 len = score.length;
        if (start >= len) return 0;
        /// @solidity memory-safe-assembly
        assembly {
            v := calldataload(add(score.offset, start))
        }
        uint256 rest = len - start;
        if (rest < 32) v &= ~bytes32((uint256(1) << (8 * (32 - rest))) - 1);
    }
}
