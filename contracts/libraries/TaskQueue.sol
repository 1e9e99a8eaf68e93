// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {LibBit} from "solady/utils/LibBit.sol";

/// @title A value-ordered task queue with O(1) insert, pop, remove and min/max lookup
/// @notice Tasks are kept per requirement class. Inside a class, tasks are grouped into value
///         buckets: the bucket of a task value V is a 24-bit, order-preserving, floating-point
///         style code of V (exact below 2^17, a relative resolution of 2^-17, about 7.6 ppm,
///         above). Each non-empty bucket holds a FIFO list of its tasks (oldest first), and a
///         three-level bitmap over the 2^24 buckets finds the highest or lowest non-empty bucket
///         with three storage reads. No operation depends on the number of queued tasks.
/// @dev Values closer than 2^-17 relative to each other count as a tie (oldest first): that is
///      the only difference from an exact sort, and it is what buys O(1) gas for every operation
///      (a binary heap costs a storage write per level when popping).
library TaskQueue {
    /// @dev Three-level bitmap over 2^24 buckets: `top` bit i <=> `mid[i]` != 0;
    ///      `mid[i]` bit j <=> `leaf[i << 8 | j]` != 0; `leaf[w]` bit b <=> bucket w << 8 | b is non-empty.
    struct Bitmap {
        uint256 top;
        mapping(uint256 => uint256) mid;
        mapping(uint256 => uint256) leaf;
    }

    /// @dev First and last task of a bucket's FIFO list.
    struct Ends {
        uint40 head;
        uint40 tail;
    }

    /// @dev A queued task's place: neighbours in its bucket list, its bucket and class.
    struct Link {
        uint40 prev;
        uint40 next;
        uint24 bucket;
        uint8 class;
    }

    /// @dev The whole queue: per class a bitmap and the bucket ends, per task its link.
    struct Queue {
        mapping(uint256 class => Bitmap) bitmaps;
        mapping(uint256 class => mapping(uint256 bucket => Ends)) ends;
        mapping(uint256 taskId => Link) links;
    }

    /// @dev Number of mantissa bits kept by `bucketOf`.
    uint256 internal constant MANTISSA_BITS = 17;

    /// @notice The order-preserving 24-bit bucket of a task value (value < 2^80 fits).
    /// @dev Values below 2^17 map to themselves; above, the bucket is (exponent, 17 mantissa
    ///      bits below the leading one). Monotone non-decreasing in `value`.
    function bucketOf(uint256 value) internal pure returns (uint256) {
        if (value < (1 << MANTISSA_BITS)) return value;
        uint256 msb = LibBit.fls(value);
        uint256 shift = msb - MANTISSA_BITS;
        return ((msb - (MANTISSA_BITS - 1)) << MANTISSA_BITS) | ((value >> shift) & ((1 << MANTISSA_BITS) - 1));
    }

    /// @notice Appends task `id` to the end of bucket `bucket` of class `class`.
    function push(Queue storage q, uint256 class, uint256 bucket, uint256 id) internal {
        Ends storage e = q.ends[class][bucket];
        uint40 tail = e.tail;
        q.links[id] = Link({prev: tail, next: 0, bucket: uint24(bucket), class: uint8(class)});
        if (tail == 0) {
            e.head = uint40(id);
            _set(q.bitmaps[class], bucket);
        } else {
            q.links[tail].next = uint40(id);
        }
        e.tail = uint40(id);
    }

    /// @notice Removes queued task `id` from wherever it is.
    /// @return class The class the task was queued in.
    function remove(Queue storage q, uint256 id) internal returns (uint256 class) {
        Link memory l = q.links[id];
        class = l.class;
        Ends storage e = q.ends[class][l.bucket];
        if (l.prev == 0) e.head = l.next;
        else q.links[l.prev].next = l.next;
        if (l.next == 0) e.tail = l.prev;
        else q.links[l.next].prev = l.prev;
        if (l.prev == 0 && l.next == 0) {
            delete q.ends[class][l.bucket];
            _unset(q.bitmaps[class], l.bucket);
        }
        delete q.links[id];
    }

    /// @notice The oldest task of the highest non-empty bucket of `class` (0 if empty).
    function top(Queue storage q, uint256 class) internal view returns (uint256 id, uint256 bucket) {
        Bitmap storage b = q.bitmaps[class];
        uint256 t = b.top;
        if (t == 0) return (0, 0);
        uint256 i = LibBit.fls(t);
        uint256 j = LibBit.fls(b.mid[i]);
        uint256 w = (i << 8) | j;
        bucket = (w << 8) | LibBit.fls(b.leaf[w]);
        id = q.ends[class][bucket].head;
    }

    /// @notice The newest task of the lowest non-empty bucket of `class` (0 if empty).
    function bottom(Queue storage q, uint256 class) internal view returns (uint256 id, uint256 bucket) {
        Bitmap storage b = q.bitmaps[class];
        uint256 t = b.top;
        if (t == 0) return (0, 0);
        uint256 i = LibBit.ffs(t);
        uint256 j = LibBit.ffs(b.mid[i]);
        uint256 w = (i << 8) | j;
        bucket = (w << 8) | LibBit.ffs(b.leaf[w]);
        id = q.ends[class][bucket].tail;
    }

    /// @notice Number of tasks of `class` with a bucket >= `minBucket`. O(n): off-chain use only.
    function countFrom(Queue storage q, uint256 class, uint256 minBucket) internal view returns (uint256 n) {
        Bitmap storage b = q.bitmaps[class];
        // Walk every non-empty bucket from the top down to minBucket.
        uint256 t = b.top;
        while (t != 0) {
            uint256 i = LibBit.fls(t);
            t &= ~(uint256(1) << i);
            uint256 m = b.mid[i];
            while (m != 0) {
                uint256 j = LibBit.fls(m);
                m &= ~(uint256(1) << j);
                uint256 w = (i << 8) | j;
                uint256 leaf = b.leaf[w];
                while (leaf != 0) {
                    uint256 k = LibBit.fls(leaf);
                    leaf &= ~(uint256(1) << k);
                    uint256 bucket = (w << 8) | k;
                    if (bucket < minBucket) return n;
                    for (uint256 id = q.ends[class][bucket].head; id != 0; id = q.links[id].next) ++n;
                }
            }
        }
    }

    function _set(Bitmap storage b, uint256 bucket) private {
        uint256 w = bucket >> 8;
        uint256 leaf = b.leaf[w];
        b.leaf[w] = leaf | (uint256(1) << (bucket & 0xff));
        if (leaf != 0) return;
        uint256 i = w >> 8;
        uint256 mid = b.mid[i];
        b.mid[i] = mid | (uint256(1) << (w & 0xff));
        if (mid == 0) b.top |= uint256(1) << i;
    }

    function _unset(Bitmap storage b, uint256 bucket) private {
        uint256 w = bucket >> 8;
        uint256 leaf = b.leaf[w] & ~(uint256(1) << (bucket & 0xff));
        b.leaf[w] = leaf;
        if (leaf != 0) return;
        uint256 i = w >> 8;
        uint256 mid = b.mid[i] & ~(uint256(1) << (w & 0xff));
        b.mid[i] = mid;
        if (mid == 0) b.top &= ~(uint256(1) << i);
    }
}
