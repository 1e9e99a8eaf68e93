// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Types, events and errors of the task market
/// @notice Split from ITaskMarket so that the market's storage base (MarketBase) and its audit
///         module can share them without implementing the external functions.
interface ITaskMarketTypes {
    // ------------------------------------------------------------------ types

    /// @notice Kind of task. Image tasks have 1..10 images; text tasks have numImages = 0.
    enum TaskType {
        Image,
        Text
    }

    /// @notice Life of a task. Success, Refunded, Cancelled and Evicted are final.
    enum TaskStatus {
        None,
        Queued, // waiting in the queue for an eligible node
        Started, // executor assigned, no commitment yet
        Committed, // executor committed; waiting for delivery (the draw may be resolved, undrawn)
        Auditing, // drawn: auditors being found or executing
        Disclosing, // every remaining party must disclose its score and salt
        Success, // executor paid
        Refunded, // fee refunded to the creator (see the Outcome of TaskSettled)
        Cancelled, // cancelled by the creator while queued, fee refunded
        Evicted, // pushed out of a full queue by a higher-value task, fee refunded
        Expired // waited in the queue longer than queueTimeout, fee refunded
    }

    /// @notice How a started task ended (TaskSettled).
    enum Outcome {
        Success, // executor paid (not drawn, audit agreed, or no auditor could be found)
        ExecutorSlashed, // executor disagreed with two agreeing auditors, or did not disclose
        NoConsensus, // no two parties agree: nobody paid or slashed for it, fee refunded
        NotCommitted, // the executor never committed: fee refunded, executor scored 0
        NotDelivered // committed but never delivered: fee refunded, executor scored 0
    }

    /// @notice Why the market slashed a node (NodeSlashed).
    enum SlashReason {
        Disagreed, // its score disagreed with the two others, which agree
        NoCommit, // an auditor that did not commit before its deadline
        NoDisclosure // a party that did not disclose before the disclosure deadline
    }

    /// @notice What an application asks for.
    /// @param taskType Image or Text.
    /// @param argsHash keccak256 of the raw argument JSON uploaded to the relay.
    /// @param modelIds keccak256 of each model ID; modelIds[0] is the base model (locality bonus).
    /// @param minVram Minimum VRAM in GB (exact VRAM when requiredGpu is set). Without a required
    ///        GPU it is rounded up to the next tier of 0, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40,
    ///        48, 64, 80, 96, 128, 192, 256 (at most 256).
    /// @param requiredGpu keccak256 of the GPU name the node must have, or 0 for any.
    /// @param numImages 1..10 for image tasks, 0 for text tasks.
    /// @param fee The price P in CNX wei (at most MAX_FEE); escrowed at creation.
    /// @param alwaysAudit Audit this task whatever the draw; escrows 3 x fee (the auditors' fees).
    struct TaskRequest {
        TaskType taskType;
        bytes32 argsHash;
        bytes32[] modelIds;
        uint16 minVram;
        bytes32 requiredGpu;
        uint8 numImages;
        uint256 fee;
        bool alwaysAudit;
    }

    /// @notice Governance parameters, packed in one storage slot.
    /// @param nonGenerationTime Seconds of T spent outside generation (download, upload, checks).
    /// @param secondsPerImage Seconds of T per image of an image task.
    /// @param textGenerationTime Seconds of T for generating a text task.
    /// @param maxQueueSize Most tasks in the queue; a full queue evicts its lowest value.
    /// @param minTimeout Execution timeout floor in seconds; the timeout is max(minTimeout, timeoutFactor x T).
    /// @param timeoutFactor Multiplier of T for the execution timeout.
    /// @param auditRateBps Probability of the audit draw, in basis points (10000 = always).
    /// @param auditLevyBps Share of a paid fee that goes to the audit pool, in basis points.
    /// @param hammingThreshold Largest pHash Hamming distance per image for matching image scores.
    /// @param auditWindow Seconds after the draw during which auditors are looked for.
    /// @param discloseWindow Seconds the parties have to disclose once disclosure opens.
    /// @param maxQueueClasses Most distinct (requiredGpu, minVram) classes in the queue at once (<= 64).
    /// @param auditScan Most pending audits a freed node inspects before it looks at the queue;
    ///        entries whose search window has ended are dropped from the list as they are met,
    ///        entries the node cannot serve move to the back (nothing hides an audit for long).
    /// @param queueTimeout Seconds a task may wait in the queue; then anyone may expire it (refund).
    /// @dev Every field has a range (see ParamOutOfRange). A task keeps the parameters in force
    ///      when it was created (deadlines, windows, levy, audit rate, threshold): a change
    ///      applies to new tasks only.
    struct Params {
        uint16 nonGenerationTime;
        uint16 secondsPerImage;
        uint16 textGenerationTime;
        uint16 maxQueueSize;
        uint32 minTimeout;
        uint8 timeoutFactor;
        uint16 auditRateBps;
        uint16 auditLevyBps;
        uint8 hammingThreshold;
        uint32 auditWindow;
        uint32 discloseWindow;
        uint8 maxQueueClasses;
        uint8 auditScan;
        uint32 queueTimeout;
    }

    /// @notice Everything known about a task (getTask). Times are Unix seconds, 0 when not set.
    /// @param creator The application that created the task.
    /// @param taskType Image or Text.
    /// @param status Current status.
    /// @param argsHash keccak256 of the argument JSON.
    /// @param fee The task fee P (the escrow is 3 x fee when alwaysAudit).
    /// @param value The task value V = fee / T in CNX wei per second.
    /// @param numImages Number of images (0 for text).
    /// @param minVram Minimum VRAM in GB.
    /// @param requiredGpu Required GPU hash or 0.
    /// @param alwaysAudit Whether the creator asked for an audit whatever the draw.
    /// @param executor The executing node (0 while queued).
    /// @param auditors The auditors assigned so far (0 where none).
    /// @param auditorDeadlines Commit deadline of each assigned auditor.
    /// @param delivered Whether the relay attested delivery of the result.
    /// @param drawResolved Whether the audit draw has been resolved.
    /// @param drawn Whether the draw selected an audit (only meaningful once resolved).
    /// @param commitBlock Block of the executor's commitment (0 before).
    /// @param startTime When the executor was assigned.
    /// @param deadline The executor's execution deadline (commit and delivery).
    /// @param auditSearchDeadline End of the auditor search window (drawn tasks).
    /// @param discloseDeadline End of the disclosure window (once opened).
    struct TaskInfo {
        address creator;
        TaskType taskType;
        TaskStatus status;
        bytes32 argsHash;
        uint256 fee;
        uint256 value;
        uint8 numImages;
        uint16 minVram;
        bytes32 requiredGpu;
        bool alwaysAudit;
        address executor;
        address[2] auditors;
        uint256[2] auditorDeadlines;
        bool delivered;
        bool drawResolved;
        bool drawn;
        uint256 commitBlock;
        uint256 startTime;
        uint256 deadline;
        uint256 auditSearchDeadline;
        uint256 discloseDeadline;
    }

    // ------------------------------------------------------------------ events

    /// @notice A task was created and its fee escrowed.
    event TaskCreated(
        uint256 indexed taskId,
        address indexed creator,
        TaskType taskType,
        bytes32 argsHash,
        bytes32[] modelIds,
        uint256 fee,
        uint256 value,
        uint8 numImages,
        uint16 minVram,
        bytes32 requiredGpu,
        bool alwaysAudit
    );
    /// @notice The task found no eligible Available node and waits in the queue.
    event TaskQueued(uint256 indexed taskId, uint256 value);
    /// @notice The task was assigned to its executor (at creation or pulled from the queue).
    event TaskStarted(uint256 indexed taskId, address indexed executor);
    /// @notice A node was assigned as auditor of a drawn task.
    event AuditorAssigned(uint256 indexed taskId, address indexed auditor);
    /// @notice A drawn task still lacks `missing` auditors; freed nodes take it before the queue.
    event AuditPending(uint256 indexed taskId, uint8 missing);
    /// @notice The auditor search window closed with `found` auditors (0 or 1).
    event AuditSearchEnded(uint256 indexed taskId, uint8 found);
    /// @notice The executor or an auditor committed to its score.
    event TaskCommitted(uint256 indexed taskId, address indexed node, bytes32 commitment);
    /// @notice The relay attested that the executor delivered its result.
    event TaskDelivered(uint256 indexed taskId);
    /// @notice The audit draw of the task was resolved.
    event DrawResolved(uint256 indexed taskId, bool drawn);
    /// @notice Every remaining auditor has committed: all parties must now disclose.
    event DisclosureOpened(uint256 indexed taskId);
    /// @notice A party disclosed its score.
    event ScoreDisclosed(uint256 indexed taskId, address indexed node, bytes score);
    /// @notice A node missed its commit or delivery deadline and was scored 0.
    event TaskTimedOut(uint256 indexed taskId, address indexed node);
    /// @notice A started task reached its final state (status Success or Refunded).
    event TaskSettled(uint256 indexed taskId, Outcome outcome);
    /// @notice CNX was sent back to the task's creator.
    event TaskRefunded(uint256 indexed taskId, address indexed creator, uint256 amount);
    /// @notice The creator cancelled its queued task.
    event TaskCancelled(uint256 indexed taskId);
    /// @notice A queued task waited longer than queueTimeout and was expired (fee refunded).
    event TaskExpired(uint256 indexed taskId);
    /// @notice A queued task was evicted by the higher-value task `byTaskId`.
    event TaskEvicted(uint256 indexed taskId, uint256 indexed byTaskId);
    /// @notice The market slashed a node through the registry; `toAuditPool` joined the audit pool.
    event NodeSlashed(uint256 indexed taskId, address indexed node, SlashReason reason, uint256 toAuditPool);
    /// @notice The executor committed and never delivered an undrawn task: `amount` (the levy
    ///         the task would have paid) was taken from its stake into the audit pool.
    event ExecutorPenalized(uint256 indexed taskId, address indexed node, uint256 amount);
    /// @notice The executor never committed: `amount` of its stake was credited to `caller`,
    ///         who timed the task out (withdraw with withdraw()).
    event TimeoutBountyPaid(uint256 indexed taskId, address indexed caller, uint256 amount);
    /// @notice Governance changed the timeout bounty.
    event TimeoutBountyChanged(uint256 bounty);
    /// @notice A node was credited `amount` (withdraw with withdraw()).
    event NodePaid(uint256 indexed taskId, address indexed node, uint256 amount);
    /// @notice A node withdrew its balance.
    event Withdrawn(address indexed node, uint256 amount);
    /// @notice The audit pool received the levy of a paid task.
    event AuditLevy(uint256 indexed taskId, uint256 amount);
    /// @notice Governance changed the parameters.
    event ParamsChanged(Params params);
    /// @notice Governance changed the task-mining hook (0 = off) and the smallest fee that counts.
    event EmissionChanged(address taskMining, uint256 minMiningFee);

    // ------------------------------------------------------------------ errors

    /// @notice Thrown when numImages does not fit the task type (image: 1..10, text: 0).
    error InvalidNumImages(TaskType taskType, uint8 numImages);
    /// @notice Thrown when a task is created with a zero fee.
    error ZeroFee();
    /// @notice Thrown when the fee is above MAX_FEE.
    error FeeTooLarge(uint256 fee, uint256 maxFee);
    /// @notice Thrown when a task names no model (modelIds[0] is the base model).
    error NoModels();
    /// @notice Thrown when the queue is full and the new task's value does not beat the lowest.
    error QueueFull(uint256 maxQueueSize, uint256 lowestValue, uint256 value);
    /// @notice Thrown when a task without a required GPU asks for more than 256 GB of VRAM.
    error MinVramTooHigh(uint16 minVram, uint16 maxMinVram);
    /// @notice Thrown when a task requiring a GPU would queue but no registered node has that
    ///         hardware (gpu, vram): nothing could ever run it.
    error NoNodeForGpu(bytes32 gpu, uint16 vram);
    /// @notice Thrown when queueing needs a new requirement class and all classes are in use.
    error TooManyQueueClasses(uint256 maxQueueClasses);
    /// @notice Thrown when someone other than the creator cancels a task.
    error NotCreator(uint256 taskId, address caller);
    /// @notice Thrown when the task is not in a status that allows the call.
    error WrongStatus(uint256 taskId, TaskStatus status);
    /// @notice Thrown when the caller is not the executor or an auditor that may act now.
    error NotAssigned(uint256 taskId, address caller);
    /// @notice Thrown when a commitment is zero.
    error ZeroCommitment(uint256 taskId);
    /// @notice Thrown when the caller's deadline for this step has passed.
    error DeadlinePassed(uint256 taskId, uint256 deadline);
    /// @notice Thrown when the draw cannot be resolved yet (same block as the commitment).
    error DrawNotResolvable(uint256 taskId, uint256 commitBlock);
    /// @notice Thrown when the draw was already resolved.
    error DrawAlreadyResolved(uint256 taskId);
    /// @notice Thrown when a disclosed score and salt do not open the node's commitment.
    error CommitmentMismatch(uint256 taskId, address node);
    /// @notice Thrown when a disclosed score is longer than 96 bytes (ten pHashes take 80).
    error ScoreTooLong(uint256 taskId, uint256 length);
    /// @notice Thrown when a party discloses twice.
    error AlreadyDisclosed(uint256 taskId, address node);
    /// @notice Thrown when timeout() finds nothing due for the task yet.
    error NothingDue(uint256 taskId);
    /// @notice Thrown when withdraw() finds a zero balance.
    error NothingToWithdraw(address node);
    /// @notice Thrown when a parameter is out of its range; `field` is its position in Params
    ///         (0 nonGenerationTime ... 13 queueTimeout, in the order of the struct; 14 the timeout bounty).
    error ParamOutOfRange(uint8 field, uint256 value);
    /// @notice Thrown when onNodeAvailable is called by someone else than the registry.
    error NotRegistry(address caller);
    /// @notice Thrown when a constructor address is zero.
    error ZeroAddress();
}

/// @title The task market: value-ordered queue, optimistic execution, secret audits, settlement
/// @notice Applications create tasks with an escrowed fee; the market starts each task on a
///         randomly selected eligible node or queues it by task value V = fee / T (T the
///         estimated execution time). The executor commits to its result score; the block hash
///         of the commit block draws whether two more nodes audit the task. Undrawn tasks
///         settle on the relay's delivery attestation (three transactions in all); drawn tasks
///         settle after the three parties disclose. Rules: docs/protocol.md.
/// @dev Conventions shared with the node client and the relay:
///      commitment = keccak256(abi.encode(uint256 taskId, address node, bytes score, bytes32 salt));
///      image score = concatenated 8-byte pHashes, text score = 32-byte SHA-256, error = empty.
interface ITaskMarket is ITaskMarketTypes {
    // ------------------------------------------------------------------ application

    /// @notice Creates a task, escrows its fee (3 x fee with alwaysAudit; needs an allowance)
    ///         and starts it on a random eligible Available node, or queues it by value.
    ///         A full queue evicts its lowest-value task (refunded in this transaction) when the
    ///         new value beats it, and reverts with QueueFull otherwise.
    /// @param req The task request.
    /// @return taskId The new task's id (sequential from 1).
    function createTask(TaskRequest calldata req) external returns (uint256 taskId);

    /// @notice createTask with an EIP-2612 permit for the escrow (value = fee, or 3 x fee with
    ///         alwaysAudit) instead of a prior approve. A permit already used (front-run) is ignored.
    /// @param req The task request.
    /// @param deadline Permit deadline.
    /// @param v Permit signature v.
    /// @param r Permit signature r.
    /// @param s Permit signature s.
    /// @return taskId The new task's id.
    function createTaskWithPermit(TaskRequest calldata req, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        returns (uint256 taskId);

    /// @notice Cancels a queued task (creator only) and refunds its escrow in full.
    /// @param taskId The task.
    function cancel(uint256 taskId) external;

    // ------------------------------------------------------------------ nodes and relay

    /// @notice Commits the caller's result: the executor (status Started, before its deadline)
    ///         or an assigned auditor (before its own deadline). An auditor's commitment frees it
    ///         for other work; it must still disclose when DisclosureOpened is emitted.
    /// @param taskId The task.
    /// @param commitment keccak256(abi.encode(taskId, node, score, salt)); never zero.
    function commit(uint256 taskId, bytes32 commitment) external;

    /// @notice The relay attests that the executor delivered a result matching its commitment.
    ///         Resolves the draw (from the block after the commitment): an undrawn task settles
    ///         here (executor paid fee minus the audit levy); a drawn one starts its audit.
    ///         Frees the executor, which may pull its next task. RELAY_ROLE only.
    /// @param taskId The task.
    function attestDelivery(uint256 taskId) external;

    /// @notice Resolves the audit draw of a committed task; anyone, from the block after the
    ///         commitment. Once the commit block is more than 256 blocks old the task counts as drawn.
    /// @param taskId The task.
    function resolveDraw(uint256 taskId) external;

    /// @notice Discloses the caller's score and salt once disclosure is open; the last
    ///         disclosure compares the scores and settles the task. Scores longer than 96 bytes
    ///         are refused (ten pHashes take 80): a party committed to one is silent, and slashed.
    /// @param taskId The task.
    /// @param score The committed score bytes.
    /// @param salt The committed salt.
    function disclose(uint256 taskId, bytes calldata score, bytes32 salt) external;

    /// @notice Applies every timeout of the task that is due (anyone may call): a queued task
    ///         past queueTimeout (expired, refunded), the executor's execution deadline (not
    ///         committed: refund; committed but not delivered: refund, or audit if drawn), an auditor's commit deadline (slashed), the end of the auditor
    ///         search window, and the disclosure deadline (the silent are slashed, the rest settle).
    /// @param taskId The task.
    function timeout(uint256 taskId) external;

    /// @notice Sends the caller its CNX balance (payments for executed and audited tasks).
    function withdraw() external;

    // ------------------------------------------------------------------ governance

    /// @notice Sets all parameters (DEFAULT_ADMIN_ROLE).
    /// @param params The new parameters.
    function setParams(Params calldata params) external;

    /// @notice Sets the task-mining hook called for every node paid for a successful task
    ///         that shows real demand: fee >= minMiningFee, no required GPU, and the node is not
    ///         the task's creator (DEFAULT_ADMIN_ROLE; 0 turns it off).
    /// @param taskMining An ITaskMining contract or 0.
    /// @param minMiningFee The smallest task fee that counts for task mining.
    function setEmission(address taskMining, uint256 minMiningFee) external;

    /// @notice Sets the bounty paid, from the executor's stake, to whoever times out a task
    ///         whose executor never committed (DEFAULT_ADMIN_ROLE; at most MAX_TIMEOUT_BOUNTY).
    /// @param bounty CNX wei.
    function setTimeoutBounty(uint256 bounty) external;

    // ------------------------------------------------------------------ views

    /// @notice Everything about a task.
    function getTask(uint256 taskId) external view returns (TaskInfo memory);

    /// @notice The commitment of `node` (executor or auditor) in the task, 0 if none.
    function commitmentOf(uint256 taskId, address node) external view returns (bytes32);

    /// @notice The task the node is executing now (as executor before delivery, or as auditor
    ///         before its commitment), 0 if none. Disclosures still owed are not counted.
    function currentTask(address node) external view returns (uint256 taskId);

    /// @notice The estimated execution time T in seconds.
    function estimatedTime(TaskType taskType, uint8 numImages) external view returns (uint256);

    /// @notice The task value V = fee / T in CNX wei per second.
    function taskValue(uint256 fee, TaskType taskType, uint8 numImages) external view returns (uint256);

    /// @notice Number of queued tasks.
    function queueSize() external view returns (uint256);

    /// @notice How many queued tasks would be served before a new task of value `value`
    ///         (all classes, whatever their requirements). O(queue size): for off-chain use.
    function queuePosition(uint256 value) external view returns (uint256);

    /// @notice The current parameters.
    function params() external view returns (Params memory);

    /// @notice CNX in the audit pool (levies and slashed stakes; pays drawn auditors).
    function auditPool() external view returns (uint256);

    /// @notice The node's withdrawable CNX balance.
    function balanceOf(address node) external view returns (uint256);

    /// @notice The task-mining hook (0 = off).
    function taskMining() external view returns (address);

    /// @notice The smallest task fee that counts for task mining.
    function minMiningFee() external view returns (uint256);

    /// @notice What a caller of timeout() earns from the stake of an executor that never
    ///         committed.
    function timeoutBounty() external view returns (uint256);
}
